"""Schemathesis fuzzes the live server from its own OpenAPI schema: no 5xx, answers conform."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.servers import http_get, start_server, wait_until_healthy

# Every check but positive_data_acceptance: bytes that fit the schema (any binary) are still
# not an image, and the API is right to answer 415 for them.
CHECKS = ["-c", "all", "--exclude-checks", "positive_data_acceptance"]


def test_schemathesis_finds_no_failure(tiny_model_dir: Path) -> None:
    server, port = start_server(tiny_model_dir)
    st = shutil.which("st", path=str(Path(sys.executable).parent)) or "st"
    try:
        wait_until_healthy(port, server)
        paths = json.loads(http_get(port, "/openapi.json")[1])["paths"]
        result = subprocess.run(
            [
                st,
                "run",
                f"http://127.0.0.1:{port}/openapi.json",
                *CHECKS,
                "--max-examples",
                "50",
                "--seed",
                "20261129",
                "--no-color",
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        server.terminate()
        server.wait(30)

    assert result.returncode == 0, result.stdout[-8000:]
    operations = sum(len(methods) for methods in paths.values())
    assert operations >= 17  # /predict, /explain, /v2 ...: the document lists every route
    assert f"Tested: {operations}" in result.stdout  # every operation was exercised
