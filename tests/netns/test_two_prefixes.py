"""Two prefixes on the upstream link, a ULA beside the global one, and a withdrawal.

radvd advertises 2001:db8:1::/64 and fd00:db8:2::/64.  Guests behind the proxy configure
both and are reachable both ways in each.  The proxy's off-link detection is seen in
what it does with a packet for an unknown address that a guest sends to its default
router: inside an on-link prefix the proxy holds it and solicits the target, outside
every on-link prefix it hands it to the router.  Then radvd withdraws the ULA (valid
lifetime 0): the proxy stops treating it as on-link, and so do the guests.
"""

from __future__ import annotations

import secrets

from lab import PREFIX_NET, ROUTER_ADDRESS, ROUTER_LL, ULA_NET, ULA_ROUTER_ADDRESS, Lab, wait_for
from labdaemon import Daemon
from peers import seen_markers, watch_frames

GLOBAL = f"{PREFIX_NET}::/64"
ULA = f"{ULA_NET}::/64"


def onlink(daemon: Daemon) -> set[str]:
    lan = next(g for g in daemon.call("groups") if g["name"] == "lan")
    return set(lan["onlink_prefixes"])


def reaches_router(lab: Lab, guest: str, address: str) -> bool:
    """Whether an echo request from `guest` to `address`, sent to its default router
    (the proxy's MAC), is passed on to the router within 2 s (rather than held)."""
    lab.ns(guest, "ip", "-6", "route", "replace", f"{address}/128", "via", ROUTER_LL, "dev", "eth0")
    # A payload of its own: the router's errors about earlier probes quote their payloads.
    pattern = secrets.token_hex(6)
    watcher = watch_frames(lab, lab.router, 2.0, bytes.fromhex(pattern), interface="r0")
    lab.ping(guest, address, timeout_s=1, extra=("-p", pattern))
    return pattern in seen_markers(watcher)


def guest_onlink_routes(lab: Lab, guest: str) -> set[str]:
    out = lab.ns(guest, "ip", "-6", "route", "show", "dev", "eth0", "proto", "kernel").stdout
    return {line.split()[0] for line in out.splitlines() if "/64" in line}


def test_two_prefixes_are_proxied_and_a_withdrawn_one_stops_being_on_link(make_lab):
    lab = make_lab(guests=2, ula=True)
    daemon = Daemon(lab).start()
    guest1, guest2 = lab.guest_list
    addresses = {
        (guest.name, net): lab.wait_slaac(guest, net=net)
        for guest in lab.guest_list
        for net in (PREFIX_NET, ULA_NET)
    }
    wait_for(lambda: onlink(daemon) == {GLOBAL, ULA}, 15, "both prefixes on-link in the proxy")
    # Both prefixes reachable both ways, and guest to guest.
    for guest in lab.guest_list:
        lab.wait_ping(guest.name, ROUTER_ADDRESS, timeout=10)
        lab.wait_ping(guest.name, ULA_ROUTER_ADDRESS, timeout=10)
        lab.wait_ping(lab.router, addresses[guest.name, PREFIX_NET], timeout=10)
        lab.wait_ping(lab.router, addresses[guest.name, ULA_NET], timeout=10)
    lab.wait_ping(guest1.name, addresses[guest2.name, ULA_NET], timeout=10)
    # Off-link detection knows both: unknown targets in either prefix are held, not routed.
    assert not reaches_router(lab, guest1.name, f"{ULA_NET}::dead")
    assert not reaches_router(lab, guest1.name, f"{PREFIX_NET}::dead")
    assert reaches_router(lab, guest1.name, "2001:db8:99::dead"), "off-link goes to the router"

    lab.withdraw_prefix(ULA_NET)
    # radvd re-reads its file on HUP; its next RA (within MaxRtrAdvInterval, 10 s) withdraws.
    wait_for(lambda: onlink(daemon) == {GLOBAL}, 15, "the proxy to drop the withdrawn ULA")
    wait_for(
        lambda: ULA not in guest_onlink_routes(lab, guest1.name),
        5,
        "the guest to drop its on-link route for the withdrawn ULA (the RA was proxied)",
    )
    assert GLOBAL in guest_onlink_routes(lab, guest1.name)
    # Now an unknown ULA target is off-link: the proxy hands it to the router.
    assert reaches_router(lab, guest1.name, f"{ULA_NET}::dead")
    assert not reaches_router(lab, guest1.name, f"{PREFIX_NET}::dead")
    # The global prefix is untouched.
    lab.wait_ping(lab.router, addresses[guest2.name, PREFIX_NET], timeout=10)
