"""Shared test fixtures, and the rule that the integration layer is never skipped quietly.

The netns/ , system/ and faults/ tests need root and network namespaces.  Where they
cannot run, they are reported as skipped AND the run fails, with a line in the summary
saying why — unless the user asked for unit tests only (`make unit`, or
PORTIER_UNIT_ONLY=1).  PORTIER_TEST_FORCE_NO_NETNS=1 makes the probe fail; it exists so
that this rule itself can be tested.
"""

import os
import sys
from pathlib import Path

import pytest

# The lab (deploy/lab.py, deploy/labdaemon.py) and the test peers are scripts, not modules
# of the product.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "deploy"))
sys.path.insert(0, str(ROOT / "tests"))

from lab import Lab  # noqa: E402
from labdaemon import netns_available  # noqa: E402

_ROOT_ONLY = ("netns", "system", "faults", "bpf")
_MISSING_EXIT = 3  # pytest's "internal error" would mislead; any non-zero fails CI

_skipped_integration = pytest.StashKey[int]()


def _integration_possible() -> bool:
    if os.environ.get("PORTIER_TEST_FORCE_NO_NETNS") == "1":
        return False
    return netns_available()


def _unit_only() -> bool:
    return os.environ.get("PORTIER_UNIT_ONLY") == "1"


def pytest_collection_modifyitems(config, items):
    config.stash[_skipped_integration] = 0
    if _integration_possible():
        return
    skip = pytest.mark.skip(reason="needs root and network namespaces")
    for item in items:
        if any(part in _ROOT_ONLY for part in Path(str(item.fspath)).parts):
            item.add_marker(skip)
            config.stash[_skipped_integration] += 1


def pytest_sessionfinish(session, exitstatus):
    skipped = session.config.stash.get(_skipped_integration, 0)
    if skipped and not _unit_only() and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = _MISSING_EXIT


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    skipped = config.stash.get(_skipped_integration, 0)
    if not skipped:
        return
    if _unit_only():
        terminalreporter.write_line(
            f"unit tests only (PORTIER_UNIT_ONLY=1): {skipped} netns/system/fault tests not run"
        )
        return
    terminalreporter.write_line(
        f"INTEGRATION LAYER NOT RUN: {skipped} netns/system/fault tests need root and "
        "network namespaces (`ip netns`); this run FAILS. Run as root, or ask for unit "
        "tests only with `make unit` (PORTIER_UNIT_ONLY=1).",
        red=True,
        bold=True,
    )


@pytest.fixture
def make_lab():
    """Build labs that are always torn down, whatever the test did."""
    labs: list[Lab] = []

    def make(**kwargs) -> Lab:
        lab = Lab(**kwargs)
        labs.append(lab)
        return lab.up()

    yield make
    for lab in labs:
        lab.down()
