"""Member patterns on real kernel hosts: guests whose interfaces come and go after start."""

from guestlife import arrive, bound, leave, worker_interfaces
from lab import ROUTER_ADDRESS, wait_for
from labdaemon import Daemon, GroupSpec


def test_guests_bound_by_a_pattern_come_and_go(make_lab):
    lab = make_lab(guests=2)
    guest1, guest2 = lab.guest_list
    lab.ns(lab.proxy, "ip", "link", "del", guest2.port)  # vm2 appears only after the start
    daemon = Daemon(lab, [GroupSpec("lan", "up0", ["vm*"])]).start()
    # The member present at start is bound by the pattern and works.
    assert bound(daemon)["vm1"] == "vm*"
    address1 = lab.wait_slaac(guest1)
    lab.wait_ping(lab.router, address1)
    groups = {g["name"]: g for g in daemon.call("groups")}
    assert groups["lan"]["patterns"] == ["vm*"] and groups["lan"]["bound"]["vm*"] == ["vm1"]
    # A guest created afterwards is bound, gets its address and is reachable both ways.
    first = arrive(lab, guest2)
    assert bound(daemon)["vm2"] == "vm*" and "vm2" in worker_interfaces(daemon)
    # Its interface deleted: worker stopped, interface released.
    gone = leave(lab, daemon, guest2)
    # The same name again works again.
    again = arrive(lab, guest2)
    print(f"patterns: new guest reachable in {first:.2f} s, released in {gone:.2f} s,")
    print(f"patterns: re-created guest reachable in {again:.2f} s")
    assert first <= 5.0 and again <= 5.0, (first, again)
    assert gone <= 2.0, gone
    # A restart keeps the pattern-bound guests.
    daemon.stop()
    daemon.start()
    assert bound(daemon).get("vm2") == "vm*"
    lab.wait_ping(guest2.name, ROUTER_ADDRESS, timeout=10)


def group_of(daemon: Daemon, name: str) -> str | None:
    return next((i["group"] for i in daemon.call("interfaces") if i["name"] == name), None)


def test_patterns_added_and_removed_at_run_time_and_overlapping(make_lab):
    lab = make_lab(guests=2)
    guest2 = lab.guest_list[1]
    lab.ns(lab.proxy, "ip", "link", "add", "vmx0", "type", "veth", "peer", "name", "vmy0")
    groups = [GroupSpec("lan", "up0", ["vm1"]), GroupSpec("other", None, ["vmx*"])]
    daemon = Daemon(lab, groups).start()
    assert "vm2" not in bound(daemon) and bound(daemon)["vmx0"] == "vmx*"
    # A pattern added at run time binds what it matches now.
    result = daemon.call("add", "vm?", "lan")
    assert result["bound"] == ["vm2"], result
    assert bound(daemon)["vm2"] == "vm?" and group_of(daemon, "vm2") == "lan"
    lab.wait_ping(guest2.name, ROUTER_ADDRESS, timeout=10)
    assert bound(daemon)["vm1"] is None  # an exact name beats a pattern
    # Removing it releases what it bound, and only that.
    result = daemon.call("remove", "vm?")
    assert result["released"] == ["vm2"], result
    assert "vm2" not in bound(daemon) and "vm1" in bound(daemon)
    wait_for(lambda: "vm2" not in worker_interfaces(daemon), 5, "vm2's worker to stop")
    # Two groups' patterns match a new name: the first group in the file wins; a binding
    # already made (vmx0 by `other`) stays with the pattern that made it.
    daemon.call("add", "vm*", "lan")
    lab.ns(lab.proxy, "ip", "link", "add", "vmx9", "type", "veth", "peer", "name", "vmy9")
    wait_for(lambda: bound(daemon).get("vmx9") == "vm*", 5, "vmx9 to be bound by lan's vm*")
    assert group_of(daemon, "vmx9") == "lan" and group_of(daemon, "vmx0") == "other"
    # A pattern cannot be an upstream: an error code, and nothing changes.
    assert daemon.ctl("add", "up*", "lan", "--upstream", check=False).returncode != 0
    assert "up*" not in {p for g in daemon.call("groups") for p in g["patterns"]}
