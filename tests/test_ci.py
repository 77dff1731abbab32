"""CI's script itself: it must not fail on a busy machine for reasons that are not the code's."""

import re

from tests.conftest import REPO

SCRIPT = (REPO / ".ci" / "run").read_text()


def test_every_apt_get_waits_for_the_dpkg_lock() -> None:
    """A concurrent apt (unattended upgrades) holds the dpkg lock; apt-get must wait for it
    instead of failing at once, so every call goes through the array that sets the timeout."""
    calls = [line for line in SCRIPT.splitlines() if re.search(r"\bapt-get\b", line)]
    definition = [line for line in calls if line.startswith("apt_get=(")]

    assert len(definition) == 1 and "DPkg::Lock::Timeout=" in definition[0]
    assert all(line in definition for line in calls), "apt-get called without the lock wait"
    assert '"${apt_get[@]}" update' in SCRIPT and '"${apt_get[@]}" install' in SCRIPT


def test_no_fixed_temporary_files_and_ci_is_exported() -> None:
    assert "/tmp/" not in SCRIPT  # two runs at once must not share files: mktemp
    assert re.search(r"^export CI=true\b", SCRIPT, re.MULTILINE)


def test_an_audit_that_checked_nothing_says_so() -> None:
    assert "NOT AUDITED: $unchecked of $total packages" in SCRIPT
