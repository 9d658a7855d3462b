"""The fault-injection lab: the real daemon, a router (radvd), two guests, and a ping.

Each fault test starts portierd with an `nft` of its own (a copy in a folder first on the
daemon's PATH, so it can be made unusable without touching the host's), measures the
longest silence of a 10 ms ping between the router and a guest across the fault, and
ends by restarting portierd to check that nothing configured or learned was lost.
"""

import itertools
import json
import re
import shutil
import subprocess
import sys
import time

import pytest
from lab import ROUTER_ADDRESS, Lab, wait_for
from labdaemon import Daemon

_REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from .* icmp_seq=(\d+)")


class Pinger:
    """`ping -D -i 0.01` in the background; the longest gap between two replies."""

    def __init__(self, lab: Lab, namespace: str, address: str) -> None:
        self.lab = lab
        self.output = lab.workdir / f"ping-{namespace}.log"
        self.process = lab.spawn(
            namespace,
            "ping",
            "-6",
            "-n",
            "-D",
            "-i",
            "0.01",
            "-W",
            "1",
            address,
            stdout=self.output.open("w"),
            stderr=subprocess.STDOUT,
        )
        wait_for(lambda: len(self.replies()) >= 5, 10, f"ping replies from {address}")

    def replies(self) -> list[float]:
        return [
            float(m.group(1)) for m in map(_REPLY.match, self.output.read_text().splitlines()) if m
        ]

    def stop(self) -> float:
        """Stop and return the longest gap in seconds, the time up to the stop included."""
        stopped_at = time.time()
        self.process.terminate()
        self.process.wait(timeout=5)
        times = self.replies()
        gaps = [b - a for a, b in itertools.pairwise(times)]
        gaps.append(stopped_at - times[-1])
        return max(gaps)


class FaultLab:
    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.bin = lab.workdir / "bin"
        self.bin.mkdir()
        self.nft = self.bin / "nft"
        shutil.copy2(shutil.which("nft") or "/usr/sbin/nft", self.nft)
        # The nftables engine: the faults include nft itself failing.
        self.daemon = Daemon(
            lab, extra='[metrics]\nlisten = "127.0.0.1:9470"\n[fastpath]\nengine = "nftables"\n'
        )
        self.launcher = ["env", f"PATH={self.bin}:/usr/bin:/bin"]
        self.addresses: list[str] = []

    def start(self) -> Daemon:
        self.daemon.start(launcher=self.launcher)
        return self.daemon

    def restart(self) -> Daemon:
        assert self.daemon.stop(timeout=15) == 0, self.daemon.log_tail()
        return self.start()

    def status(self) -> dict:
        return self.daemon.call("status")

    def status_text(self) -> str:
        return self.daemon.ctl("status", json_output=False).stdout

    def restarts(self) -> dict[str, int]:
        return {w["interface"]: w["restarts"] for w in self.daemon.call("workers")}

    def metrics(self) -> str:
        code = (
            "import urllib.request;"
            "print(urllib.request.urlopen('http://127.0.0.1:9470/metrics', timeout=5)"
            ".read().decode())"
        )
        return self.lab.ns(self.lab.proxy, sys.executable, "-c", code).stdout

    def metric(self, name: str) -> float:
        for line in self.metrics().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"no metric {name}")

    def neighbors(self) -> set[tuple[str, str]]:
        return {(n["address"], n["interface"]) for n in self.daemon.call("neighbors")}

    def groups(self) -> list:
        return json.loads(self.daemon.ctl("groups", check=True).stdout)["result"]

    def ping(self, namespace: str, address: str) -> Pinger:
        return Pinger(self.lab, namespace, address)


@pytest.fixture
def fault_lab(make_lab):
    lab = make_lab(guests=2)
    faults = FaultLab(lab)
    faults.start()
    faults.addresses = [lab.wait_slaac(g) for g in lab.guest_list]
    for guest, address in zip(lab.guest_list, faults.addresses, strict=True):
        lab.wait_ping(guest.name, ROUTER_ADDRESS)
        lab.wait_ping(lab.router, address)
    yield faults
    if faults.daemon.process is not None and faults.daemon.process.poll() is None:
        faults.daemon.process.kill()
        faults.daemon.process.wait(timeout=5)


def assert_nothing_lost(faults: FaultLab, groups: list, neighbors: set) -> None:
    """After a restart of portierd: the same groups, every neighbor still known."""
    daemon = faults.restart()
    assert faults.groups() == groups
    wait_for(lambda: neighbors <= faults.neighbors(), 5, "every neighbor after the restart")
    assert daemon.process is not None
