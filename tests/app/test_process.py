"""What `python -m app` hands uvicorn, the CPU budget it sizes itself by, and its log lines."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from app import cpu
from app.__main__ import make_config
from app.connections import GuardedHttpToolsProtocol
from app.settings import Settings
from tests.conftest import REPO


def test_uvicorn_gets_the_settings_without_rounding(tiny_model_dir: Path) -> None:
    settings = Settings(
        model_dir=tiny_model_dir,
        graceful_shutdown_s=0.5,
        header_timeout_s=2.5,
        max_connections=7,
    )

    config = make_config(settings)

    assert config.timeout_graceful_shutdown == 0.5  # int() used to make this 0
    assert issubclass(config.http, GuardedHttpToolsProtocol)
    assert (config.http.header_timeout_s, config.http.max_connections) == (2.5, 7)


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [
        ("max 100000\n", None),  # no quota
        ("150000 100000\n", 1.5),  # 1.5 CPUs
        ("50000 100000\n", 0.5),
        ("garbage\n", None),
    ],
)
def test_cgroup_v2_cpu_max_is_parsed(
    cpu_max: str, expected: float | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "cpu.max").write_text(cpu_max)
    monkeypatch.setattr(cpu, "CGROUP_V2_CPU_MAX", tmp_path / "cpu.max")
    monkeypatch.setattr(cpu, "CGROUP_V1_QUOTA", tmp_path / "absent")

    assert cpu._cgroup_quota() == expected


def test_cgroup_v1_quota_is_parsed_when_v2_is_absent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "quota").write_text("250000\n")
    (tmp_path / "period").write_text("100000\n")
    monkeypatch.setattr(cpu, "CGROUP_V2_CPU_MAX", tmp_path / "absent")
    monkeypatch.setattr(cpu, "CGROUP_V1_QUOTA", tmp_path / "quota")
    monkeypatch.setattr(cpu, "CGROUP_V1_PERIOD", tmp_path / "period")
    assert cpu._cgroup_quota() == 2.5

    (tmp_path / "quota").write_text("-1\n")  # v1's "no limit"
    assert cpu._cgroup_quota() is None


def test_a_fractional_quota_rounds_up_and_never_exceeds_the_affinity(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cpu, "CGROUP_V2_CPU_MAX", tmp_path / "cpu.max")
    affinity = len(cpu.os.sched_getaffinity(0))

    (tmp_path / "cpu.max").write_text("50000 100000\n")
    assert cpu.available_cpus() == 1  # half a CPU is still one thread's worth
    (tmp_path / "cpu.max").write_text(f"{(affinity + 3) * 100000} 100000\n")
    assert cpu.available_cpus() == affinity  # a quota above the cores grants no more


def test_log_lines_are_json_with_the_request_fields(
    make_client, capsys: pytest.CaptureFixture
) -> None:
    client = make_client()
    client.get("/health/live", headers={"X-Request-ID": "trace-42"})

    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    access = [e for e in entries if e["logger"] == "app.access" and e["path"] == "/health/live"]
    assert len(access) == 1
    entry = access[0]
    assert entry["status"] == 200 and entry["method"] == "GET"
    assert entry["request_id"] == "trace-42" and entry["duration_ms"] >= 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", entry["time"])
    assert {"level", "message"} <= set(entry)


def test_the_version_comes_from_pyproject_when_the_package_is_not_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The container copies app/ and pyproject.toml without installing the package."""
    import tomllib
    from importlib.metadata import PackageNotFoundError

    from app import openapi

    def not_installed(name: str) -> str:
        raise PackageNotFoundError(name)

    monkeypatch.setattr(openapi, "version", not_installed)
    with openapi.PYPROJECT.open("rb") as handle:
        expected = tomllib.load(handle)["project"]["version"]

    assert openapi.package_version() == expected != "0+unknown"


def run_app(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "MODEL_DIR": "/nonexistent"},  # a server would exit 3
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_help_lists_every_setting_with_its_default_and_starts_nothing() -> None:
    result = run_app("--help")

    assert result.returncode == 0, result.stderr
    for name in Settings.model_fields:
        assert f"  {name.upper()} (default: " in result.stdout, name
    assert "MAX_HEADER_BYTES (default: 32768)" in result.stdout
    assert "cannot serve the model" not in result.stderr


def test_an_unknown_argument_is_an_error_with_the_usage() -> None:
    result = run_app("--port", "9000")

    assert result.returncode == 2
    assert "usage: python -m app" in result.stderr and "--port" in result.stderr
