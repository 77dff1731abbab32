"""The README's promises: its two commands are the ones CI runs, it stays a short front door,
and every setting is documented (the full table in docs/operations.md)."""

import re

from app.settings import Settings
from tests.conftest import REPO

README = (REPO / "README.md").read_text()
OPERATIONS = (REPO / "docs" / "operations.md").read_text()
MAX_README_LINES = 250


def test_readme_opens_with_the_two_commands_and_ci_runs_the_second() -> None:
    first_block = re.search(r"```bash\n(.*?)```", README, re.DOTALL).group(1).strip()
    serve, test = first_block.splitlines()

    assert "python -m app" in serve and re.search(r"pip install -e \"?\.", serve)
    assert "pytest" in test
    assert test in (REPO / ".ci" / "run").read_text()


def test_readme_is_a_front_door() -> None:
    assert len(README.splitlines()) <= MAX_README_LINES


def test_every_setting_is_documented() -> None:
    missing = [
        name.upper() for name in Settings.model_fields if f"`{name.upper()}`" not in OPERATIONS
    ]

    assert missing == []


def test_the_readme_names_only_real_settings() -> None:
    table = README.split("## Settings people change", 1)[1].split("\n## ", 1)[0]
    named = re.findall(r"^\| `([A-Z_]+)` \|", table, re.MULTILINE)
    settings = {name.upper() for name in Settings.model_fields}

    assert named and set(named) <= settings
