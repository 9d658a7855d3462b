"""Churn: 200 guests' interfaces created and deleted, 10 rounds, as fast as `ip` can.

portierd binds them by the pattern `vm*`.  Every name is used once (a leak keyed by
interface name would grow with the rounds).  In half the rounds the interfaces are
deleted only once every one of them has its worker running, in the others at once, in
the middle of their start-up.  Afterwards nothing is left: no worker or other process
below portierd, no interface, no descriptor or socket, no metrics series, no memory
beyond the steady state measured after the first round; and a guest created after the
churn is proxied as quickly as one created before it.
"""

from __future__ import annotations

import time

from guestlife import arrive, descendants, leave, open_fds, private_kib, worker_interfaces
from lab import Lab, wait_for
from labdaemon import Daemon, GroupSpec

GUESTS = 200
ROUNDS = 10
COUNTS = ("workers", "interfaces", "processes", "sockets", "other")
# Memory freed by Python stays mapped (a burst's high-water mark in the heap; 24 MiB was
# seen in one round), so the leak check counts live Python blocks; a leak of one object
# per guest would show as one block per guest churned.
BLOCKS_PER_GUEST = 5


def batch(lab: Lab, lines: list[str]) -> None:
    script = lab.workdir / "churn.batch"
    script.write_text("\n".join(lines) + "\n")
    lab.ns(lab.proxy, "ip", "-batch", str(script), timeout=120)


def churn_names(round_: int) -> list[str]:
    return [f"vmc{round_}x{i}" for i in range(GUESTS)]


def footprint(daemon: Daemon) -> dict[str, int]:
    assert daemon.process is not None
    pid = daemon.process.pid
    return {
        "workers": len(daemon.call("workers")),
        "interfaces": len(daemon.call("interfaces")),
        "processes": len(descendants(pid)),
        **open_fds(pid),
        "uss_kib": private_kib(pid),
        "python_blocks": daemon.status()["python_blocks"],
    }


# up0's and vm1's workers, and the zygote
BASELINE = {"workers": 2, "interfaces": 2, "processes": 3}


def footprint_settled(daemon: Daemon, steady: dict[str, int], timeout: float) -> dict[str, int]:
    """The footprint once the counts in `steady` are back (workers exit, and their
    sockets close, a little after they are released), or at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        now = footprint(daemon)
        if all(now[key] == steady[key] for key in steady if key in COUNTS):
            return now
        if time.monotonic() > deadline:
            return now
        time.sleep(0.2)


def one_round(lab: Lab, daemon: Daemon, round_: int, wait_for_workers: bool) -> None:
    names = churn_names(round_)
    adds = []
    for name in names:
        peer = "cp" + name[2:]  # not matched by the pattern
        adds += [f"link add {name} type veth peer name {peer}", f"link set {name} up"]
    batch(lab, adds)
    if wait_for_workers:
        wait_for(
            lambda: set(names) <= worker_interfaces(daemon),
            120,
            f"workers for all {GUESTS} guests of round {round_}",
            interval=0.2,
        )
    batch(lab, [f"link del {name}" for name in names])


def test_guests_churning_leave_nothing_behind(make_lab):
    lab = make_lab(guests=2)
    guest2 = lab.guest_list[1]
    lab.ns(lab.proxy, "ip", "link", "del", guest2.port)
    daemon = Daemon(lab, [GroupSpec("lan", "up0", ["vm*"])]).start()
    first = arrive(lab, guest2)
    leave(lab, daemon, guest2)

    def settled() -> bool:
        return not any(name.startswith("vmc") for name in worker_interfaces(daemon)) and not any(
            i["name"].startswith("vmc") for i in daemon.call("interfaces")
        )

    started = time.monotonic()
    steady: dict[str, int] = {}
    for round_ in range(ROUNDS):
        one_round(lab, daemon, round_, wait_for_workers=round_ % 2 == 0)
        if round_ == 0:  # the steady state: what one round's first-time allocations leave
            wait_for(settled, 60, "the first round's guests to be released")
            steady = footprint_settled(daemon, BASELINE, 60)
            assert {k: steady[k] for k in BASELINE} == BASELINE, steady
    wait_for(settled, 60, "every churned guest to be released and its worker stopped")
    churn_s = time.monotonic() - started
    after = footprint_settled(daemon, steady, 30)
    metrics = daemon.metrics()
    leftover_series = [series for series in metrics if 'interface="vmc' in series]
    again = arrive(lab, guest2)
    print(f"churn: {ROUNDS} rounds of {GUESTS} guests in {churn_s:.1f} s")
    print(f"churn: after round 1 {steady}; after round {ROUNDS} {after}")
    print(f"churn: a new guest reachable in {first:.2f} s before, {again:.2f} s after")
    for key in COUNTS:
        assert after[key] == steady[key], (key, steady, after)
    churned = (ROUNDS - 1) * GUESTS
    assert after["python_blocks"] - steady["python_blocks"] <= BLOCKS_PER_GUEST * churned, (
        steady,
        after,
    )
    assert not leftover_series, leftover_series[:5]
    assert again <= max(2 * first, first + 2.0), (first, again)
