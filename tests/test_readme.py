"""The README's promises: its two commands are the ones CI runs, and every setting is listed."""

import re

from app.settings import Settings
from tests.conftest import REPO

README = (REPO / "README.md").read_text()


def test_readme_opens_with_the_two_commands_and_ci_runs_the_second() -> None:
    first_block = re.search(r"```bash\n(.*?)```", README, re.DOTALL).group(1).strip()
    serve, test = first_block.splitlines()

    assert "python -m app" in serve and re.search(r"pip install -e \"?\.", serve)
    assert "pytest" in test
    assert test in (REPO / ".ci" / "run").read_text()


def test_every_setting_is_documented() -> None:
    missing = [name.upper() for name in Settings.model_fields if f"`{name.upper()}`" not in README]

    assert missing == []
