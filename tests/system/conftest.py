"""The system layer's common lab: a router, the proxy running portierd, two guests."""

import pytest
from lab import Lab, wait_for
from labdaemon import Daemon


@pytest.fixture
def lab(make_lab) -> Lab:
    return make_lab(guests=2)


@pytest.fixture
def daemon(lab) -> Daemon:
    daemon = Daemon(lab).start()
    wait_for(lambda: daemon.call("status")["forwarding"] == 3, 10, "every member forwarding")
    return daemon
