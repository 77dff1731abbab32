"""`python -m app`: run the service with uvicorn, every option from the settings.

With WORKERS > 1 this process is the supervisor of that many workers (app.supervisor), each of
them `python -m app` again, serving the socket it was handed.
"""

import argparse
import os
import signal
import socket
import sys
import textwrap
from types import FrameType

import uvicorn

from app.connections import guarded_protocol
from app.logs import configure_logging
from app.settings import Settings, get_settings
from app.supervisor import LISTEN_FD, supervise

STARTUP_FAILURE = 3  # uvicorn's own exit code when the app fails to start


class Server(uvicorn.Server):
    """uvicorn, except that SIGTERM ends in exit code 0 after the graceful drain.

    Plain uvicorn re-raises a captured SIGTERM once it has shut down, so the process dies by
    the signal (exit 143) even when every request was answered; orchestrators read that as a
    crash. SIGINT keeps uvicorn's behaviour (a second Ctrl-C forces the exit).
    """

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM:
            self.should_exit = True
            return
        super().handle_exit(sig, frame)


def make_config(settings: Settings) -> uvicorn.Config:
    """uvicorn's configuration, every option from the settings."""
    return uvicorn.Config(
        "app.main:app",
        host=settings.host,
        port=settings.port,
        timeout_graceful_shutdown=settings.graceful_shutdown_s,  # type: ignore[arg-type]
        http=guarded_protocol(
            settings.header_timeout_s, settings.max_header_bytes, settings.max_connections
        ),
        server_header=False,  # no "server: uvicorn" banner naming the stack to a scanner
        access_log=False,  # app.access writes one JSON line per request
        log_config=None,  # app.logs configures JSON logging
    )


def settings_help() -> str:
    """One entry per setting, generated from the settings model: name, default, meaning."""
    entries = []
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        shown = "unset" if default is None else default
        entries.append(f"  {name.upper()} (default: {shown})")
        entries.extend(
            textwrap.wrap(
                field.description or "", 96, initial_indent=" " * 6, subsequent_indent=" " * 6
            )
        )
    return "\n".join(entries)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """No options but --help: every setting is an environment variable, listed there."""
    parser = argparse.ArgumentParser(
        prog="python -m app",
        description="Serve the CIFAR-10 classifier over HTTP (uvicorn; WORKERS processes). "
        "Every setting is an environment variable.",
        epilog="settings (environment variables):\n" + settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser.parse_args(argv)


def main() -> None:
    parse_args(sys.argv[1:])
    settings = get_settings()
    configure_logging(settings.log_level)
    config = make_config(settings)
    worker_fd = os.environ.pop(LISTEN_FD, None)  # set when app.supervisor started this process
    if worker_fd is not None:
        sockets = [socket.socket(fileno=int(worker_fd))]
    else:
        listener = (
            config.bind_socket()
            if settings.listen_fd is None
            else socket.socket(fileno=settings.listen_fd)
        )
        if settings.processes > 1:
            sys.exit(supervise(settings.processes, listener))
        sockets = [listener]
    server = Server(config)
    server.run(sockets)
    if not server.started:
        sys.exit(STARTUP_FAILURE)


if __name__ == "__main__":
    main()
