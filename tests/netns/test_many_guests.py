"""A host with 128 guests in one group: the proxy comes up, every guest gets its SLAAC
address through it, and the router reaches every one of them (issue 13's lab at scale;
bench/scale_bench.py measures the same lab without asserting)."""

import time

from lab import ROUTER_ADDRESS, wait_for
from labdaemon import Daemon

GUESTS = 128


def test_a_128_guest_lab_comes_up_and_every_guest_is_reachable(make_lab):
    lab = make_lab(guests=GUESTS)
    started = time.monotonic()
    daemon = Daemon(lab).start(timeout=120)
    wait_for(
        lambda: daemon.call("status")["forwarding"] == GUESTS + 1,
        120,
        f"all {GUESTS + 1} members forwarding",
        interval=0.5,
    )
    # radvd advertises at least every 10 s: the RA reaches every guest within that.
    addresses = {guest.name: lab.wait_slaac(guest, timeout=60) for guest in lab.guest_list}
    unreachable = [
        name
        for name, address in addresses.items()
        if lab.ping(lab.router, address, count=1, timeout_s=2).returncode != 0
    ]
    first_lost = len(unreachable)
    # A first ping that waited on the proxy's solicitation may be lost; a second is not.
    unreachable = [
        name
        for name in unreachable
        if lab.ping(lab.router, addresses[name], count=2, timeout_s=2).returncode != 0
    ]
    assert not unreachable, f"the router cannot reach {unreachable}"
    assert len(set(addresses.values())) == GUESTS
    # And the other way: the last guest reaches the router.
    last = lab.guest_list[-1].name
    assert lab.ping(last, ROUTER_ADDRESS, count=1, timeout_s=2).returncode == 0
    workers = daemon.call("workers")
    assert sum(w["state"] == "running" for w in workers) == GUESTS + 1
    print(
        f"{GUESTS} guests reachable {time.monotonic() - started:.1f} s after portierd started;"
        f" {first_lost} first pings lost"
    )
