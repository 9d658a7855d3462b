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

_ROOT_ONLY = ("netns", "system")


def pytest_collection_modifyitems(config, items):
    if netns_available():
        return
    skip = pytest.mark.skip(reason="needs root and network namespaces")
    for item in items:
        if any(part in _ROOT_ONLY for part in Path(str(item.fspath)).parts):
            item.add_marker(skip)


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
