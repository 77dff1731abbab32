"""What the lean install saves: `pip install -e .` (OpenVINO, no TensorFlow) beside
`pip install -e ".[tensorflow]"`, each into a fresh venv, in one run.

    python -m benchmarks.install

For each: pip's wall-clock time (no cache; packages come from the configured index), the
venv's size, and the time from starting `python -m app` (WORKERS=1, the committed model) to
its first 200 from /health, with whether TensorFlow's library was mapped into the serving
process and how many CUDA-probe lines it printed. Writes benchmarks/results/install.md.
"""

import datetime as dt
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from benchmarks.run import RESULTS, ROOT, cpu_model

TARGETS = (".", ".[tensorflow]")


def folder_mb(path: Path) -> int:
    return (
        sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) >> 20
    )


def time_to_health(python: Path, port: int) -> tuple[float, bool, int]:
    """Seconds from start to the first 200; TensorFlow mapped; CUDA-probe lines on stderr."""
    env = {"PATH": "/usr/bin:/bin", "PORT": str(port), "WORKERS": "1", "LOG_LEVEL": "warning"}
    started = time.monotonic()
    server = subprocess.Popen(
        [python, "-m", "app"], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        while True:
            assert server.poll() is None, "the server exited"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.05)
        seconds = time.monotonic() - started
        mapped = "site-packages/tensorflow/" in Path(f"/proc/{server.pid}/maps").read_text()
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=30)
    return seconds, mapped, stderr.count("cuInit")


def measure(target: str, workdir: Path, port: int) -> dict[str, object]:
    venv = workdir / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    python = venv / "bin" / "python"
    started = time.monotonic()
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-cache-dir", "-e", target],
        cwd=ROOT,
        check=True,
    )
    install_s = time.monotonic() - started
    health_s, mapped, probes = time_to_health(python, port)
    return {
        "target": target,
        "install_s": install_s,
        "venv_mb": folder_mb(venv),
        "health_s": health_s,
        "tensorflow_mapped": mapped,
        "cuda_probe_lines": probes,
    }


def main() -> None:
    rows = []
    for i, target in enumerate(TARGETS):
        workdir = Path(tempfile.mkdtemp(prefix="install-"))
        try:
            rows.append(measure(target, workdir, 18100 + i))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        print(rows[-1], flush=True)
    lines = [
        "# Lean install against the TensorFlow extra",
        "",
        f"{dt.date.today()}, {cpu_model()}; `python -m benchmarks.install`, one run.",
        "",
        "| `pip install -e` | install s | venv MB | start to /health s | TensorFlow mapped "
        "| CUDA-probe lines |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| `{r['target']}` | {r['install_s']:.0f} | {r['venv_mb']:,} | {r['health_s']:.1f} "
        f"| {'yes' if r['tensorflow_mapped'] else 'no'} | {r['cuda_probe_lines']} |"
        for r in rows
    ]
    (RESULTS / "install.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
