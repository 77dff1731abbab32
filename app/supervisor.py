"""`python -m app` with WORKERS > 1: that many serving processes accepting on one socket.

The parent binds the port and starts each worker as `python -m app` itself, handing it the
listening socket (its fd in APP_LISTEN_FD) and a PROMETHEUS_MULTIPROC_DIR of its own making;
each worker loads its own model versions, batchers and thread pools (app.settings sizes them:
TensorFlow and decoding by CPUs / WORKERS, OpenVINO by INFERENCE_THREADS). The parent imports
neither TensorFlow nor the app, and:

- starts the first worker alone and the others once it listens, so a model that cannot be
  served is reported once, by one worker, and the parent exits 3 (uvicorn's failed start);
- starts another worker when one dies later (one that then fails to start stops them all, 3);
- on SIGTERM or SIGINT closes its own copy of the socket and sends every worker SIGTERM, which
  drains it as it drains a single process (/health 503 at once, in-flight requests answered),
  and exits 0 once every worker has ended so.

uvicorn's own supervisor (`uvicorn --workers`, uvicorn.supervisors.Multiprocess in 0.54) keeps
none of this: it pickles its Config into `spawn` children, and the protocol class that
app.connections makes at run time does not pickle; its children run plain uvicorn.Server, which
ends a SIGTERM by dying of it; it starts every worker at once, so a broken model is reported
once per worker, and its parent then exits 0 (uvicorn.run returns the start-up failure with one
worker only); and nothing removes a dead worker's live gauges from the metrics folder.
"""

import ctypes
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from types import FrameType

from prometheus_client.multiprocess import mark_process_dead
from uvicorn.config import STARTUP_FAILURE

logger = logging.getLogger("app.supervisor")

LISTEN_FD = "APP_LISTEN_FD"  # set for a worker: the fd of the socket it serves
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# How a worker the parent stopped ends: 0 after its drain, or by the signal before it serves.
STOPPED = {0, -signal.SIGTERM, -signal.SIGINT}
_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def supervise(workers: int, listener: socket.socket) -> int:
    """Serve with `workers` processes on `listener` until a stop signal; the exit code."""
    metrics_dir = tempfile.mkdtemp(prefix="app-metrics-")
    try:
        return Supervisor(workers, listener, metrics_dir).run()
    finally:
        listener.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)


class Supervisor:
    def __init__(self, workers: int, listener: socket.socket, metrics_dir: str) -> None:
        self.count = workers
        self.listener = listener
        self.metrics_dir = metrics_dir
        self.env = os.environ | {
            LISTEN_FD: str(listener.fileno()),
            "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
        }
        self.workers: dict[int, subprocess.Popen] = {}
        self.listening = False  # the first worker has started: the model loads
        self.stopping = False
        self.exit_code = 0

    def run(self) -> int:
        # Signals only write their number to a pipe the loop waits on (no work in handlers).
        wakeup, wakeup_write = os.pipe()
        os.set_blocking(wakeup_write, False)
        signal.set_wakeup_fd(wakeup_write)
        for signum in (*STOP_SIGNALS, signal.SIGCHLD):
            signal.signal(signum, _noted)
        self._start()
        while self.workers:
            # Until the first worker listens, look at the socket every 0.1 s.
            timeout = None if self.listening or self.stopping else 0.1
            if select.select([wakeup], [], [], timeout)[0]:
                received = os.read(wakeup, 256)
                if not self.stopping and any(s in STOP_SIGNALS for s in received):
                    logger.info("stop signal received: draining %d workers", len(self.workers))
                    self._stop()
            self._reap()
            if not (self.listening or self.stopping) and self._socket_listens():
                self.listening = True
                for _ in range(self.count - 1):
                    self._start()
        return self.exit_code

    def _start(self) -> None:
        worker = subprocess.Popen(
            [sys.executable, "-m", "app"],
            env=self.env,
            pass_fds=(self.listener.fileno(),),
            preexec_fn=_stop_with_parent,
        )
        self.workers[worker.pid] = worker
        logger.info("started worker %d", worker.pid, extra={"worker_pid": worker.pid})

    def _stop(self) -> None:
        self.stopping = True
        self.listener.close()  # the socket closes when the workers close theirs after draining
        for worker in self.workers.values():
            worker.send_signal(signal.SIGTERM)

    def _reap(self) -> None:
        for pid, worker in list(self.workers.items()):
            code = worker.poll()
            if code is None:
                continue
            del self.workers[pid]
            mark_process_dead(pid, self.metrics_dir)  # its live gauges leave the sums
            extra = {"worker_pid": pid, "exit_code": code}
            if self.stopping:
                if code not in STOPPED:
                    logger.error("worker %d ended badly while stopping", pid, extra=extra)
                    self.exit_code = self.exit_code or 1
            elif code == STARTUP_FAILURE or not self.listening:
                logger.error("worker %d failed to start: stopping", pid, extra=extra)
                self.exit_code = STARTUP_FAILURE
                self._stop()
            else:
                logger.error("worker %d died: starting another", pid, extra=extra)
                self._start()

    def _socket_listens(self) -> bool:
        """The workers call listen() on the shared socket once their model is loaded."""
        return bool(self.listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))


def _noted(signum: int, frame: FrameType | None) -> None:
    """The wakeup fd carries the signal to the loop; a Python handler makes it be written."""


def _stop_with_parent() -> None:
    """In a new worker, before it runs: SIGTERM (its drain) when the parent dies, even killed."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
