import pytest
from daemon import netns_available
from lab import Lab

pytestmark = pytest.mark.netns


def pytest_collection_modifyitems(config, items):
    if netns_available():
        return
    skip = pytest.mark.skip(reason="needs root and network namespaces")
    for item in items:
        if "netns" in str(item.fspath):
            item.add_marker(skip)


@pytest.fixture
def make_lab():
    labs: list[Lab] = []

    def make(**kwargs) -> Lab:
        lab = Lab(**kwargs)
        labs.append(lab)
        return lab.up()

    yield make
    for lab in labs:
        lab.down()
