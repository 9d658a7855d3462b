"""Engine decisions per second on one core (issue: core library benchmark).

Run: .venv/bin/python bench/engine_bench.py [--seconds S]
Prints decisions/s for (a) a unicast data frame to a known neighbor, (b) a multicast
NS that must be validated and rewritten and (c) the early answer to that NS (what a
worker's answer thread runs: portier.answers.EarlyAnswers.answer on a published table,
called through one more Python function), plus the cost of a bare function call as a
baseline measured in the same run.  Then (b) and (c) once more, each call after 50 ms
of idleness, as a resolution after a quiet spell meets them: the caches are cold then.
Last, what the main thread pays to publish the answer table the answer thread reads.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

from portier.addresses import parse_ipv6, parse_mac, solicited_node
from portier.answers import AnswerTables, EarlyAnswers, build_answer_table
from portier.engine import Engine, Transmit
from portier.frame import IPv6Header, build_frame
from portier.groups import Topology
from portier.ndmsg import LinkLayerAddressOption, NeighborSolicitation, encode_nd
from portier.neighbors import Neighbor

UP_MAC = parse_mac("02:00:00:00:00:01")
VM_MAC = parse_mac("02:00:00:00:01:01")
ROUTER_MAC = parse_mac("52:54:00:00:00:01")
GUEST_MAC = parse_mac("52:54:00:00:01:01")
ROUTER = parse_ipv6("2001:db8:1::1")
GUEST = parse_ipv6("2001:db8:1::101")
ROUTER_LL = parse_ipv6("fe80::1")


def make_engine() -> Engine:
    topology = Topology()
    for name, mac, index in (("up0", UP_MAC, 2), ("vm1", VM_MAC, 3)):
        topology.bind(name)
        topology.update_link(name, ifindex=index, mac=mac, mtu=1500)
    topology.create_group("lan")
    topology.add_to_group("up0", "lan", upstream=True)
    topology.add_to_group("vm1", "lan")
    engine = Engine(topology)
    engine.neighbors.learn("lan", GUEST, "vm1", GUEST_MAC, 0.0)
    engine.neighbors.learn("lan", ROUTER, "up0", ROUTER_MAC, 0.0)
    return engine


def early_answerer(engine: Engine) -> Callable[[str, bytes, float], object]:
    """What the answer thread runs: an answer from the table the main loop published."""
    early = EarlyAnswers()
    early.publish(build_answer_table(engine.topology, engine.neighbors, "up0"))
    answer = early.answer

    def answer_on(ingress: str, frame: bytes, now: float) -> object:
        return answer(frame, now)

    return answer_on


def data_frame() -> bytes:
    payload = bytes(8) + bytes(18)  # a 26-byte UDP datagram: 80-byte frame
    header = IPv6Header(ROUTER, GUEST, 17, 64, len(payload))
    return build_frame(UP_MAC, ROUTER_MAC, header, payload)


def ns_frame() -> bytes:
    dst = solicited_node(GUEST)
    option = LinkLayerAddressOption(1, ROUTER_MAC)
    icmp = encode_nd(NeighborSolicitation(GUEST, (option,)), ROUTER_LL, dst)
    header = IPv6Header(ROUTER_LL, dst, 58, 255, len(icmp))
    return build_frame(b"\x33\x33" + dst[12:], ROUTER_MAC, header, icmp)


def rate(
    label: str, handle: Callable[[str, bytes, float], object], frame: bytes, seconds: float
) -> float:
    count = 0
    batch = 10_000
    start = time.perf_counter()
    deadline = start + seconds
    now = 1.0
    while time.perf_counter() < deadline:
        for _ in range(batch):
            handle("up0", frame, now)
        count += batch
    elapsed = time.perf_counter() - start
    per_s = count / elapsed
    print(f"{label:<44} {per_s:>12,.0f} decisions/s  {1e6 / per_s:6.2f} us each")
    return per_s


def cold_us(handle: Callable[[str, bytes, float], object], frame: bytes, calls: int = 40) -> float:
    """Median microseconds of one call made after 50 ms asleep."""
    samples = []
    for _ in range(calls):
        time.sleep(0.05)
        start = time.perf_counter()
        handle("up0", frame, 1.0)
        samples.append((time.perf_counter() - start) * 1e6)
    return statistics.median(samples)


def table_costs_us(neighbors: int = 1000, rounds: int = 200) -> tuple[float, float]:
    """Median microseconds to publish the answer table: rebuilt whole (after a topology
    change) and after one neighbor changed, with `neighbors` behind vm1."""
    engine = make_engine()
    for i in range(neighbors):
        address = GUEST[:12] + (0x1000 + i).to_bytes(4, "big")
        engine.neighbors.learn("lan", address, "vm1", GUEST_MAC, 0.0)
    tables = AnswerTables("up0")
    whole, one = [], []
    for i in range(rounds):
        tables.topology_changed()
        start = time.perf_counter()
        tables.publish(engine.topology, engine.neighbors)
        whole.append((time.perf_counter() - start) * 1e6)
        entry = Neighbor("lan", GUEST, "vm1", GUEST_MAC, last_seen=1.0 + i)
        engine.neighbors.put(entry)  # as the supervisor's delta stores it
        start = time.perf_counter()
        tables.neighbor_changed(engine.topology, entry)
        tables.publish(engine.topology, engine.neighbors)
        one.append((time.perf_counter() - start) * 1e6)
    return statistics.median(whole), statistics.median(one)


def fanout_us(members: int, rounds: int = 300) -> tuple[float, float]:
    """Median microseconds of relaying a multicast NS from the upstream into a group of
    `members` downstream members: for a target the cache places behind one of them (sent
    to it alone) and for one it does not know (flooded: what every NS cost before)."""
    topology = Topology()
    topology.create_group("lan")
    names = ["up0"] + [f"vm{n}" for n in range(members)]
    for index, name in enumerate(names):
        topology.bind(name)
        mac = bytes([2, 0, 0, 0, index >> 8, index & 0xFF])
        topology.update_link(name, ifindex=index + 2, mac=mac, mtu=1500)
        topology.add_to_group(name, "lan", upstream=name == "up0")
    engine = Engine(topology)
    engine.neighbors.learn("lan", GUEST, "vm0", GUEST_MAC, 0.0)
    unknown = GUEST[:15] + b"\x77"

    def ns_for(target: bytes) -> bytes:
        dst = solicited_node(target)
        option = LinkLayerAddressOption(1, ROUTER_MAC)
        icmp = encode_nd(NeighborSolicitation(target, (option,)), ROUTER_LL, dst)
        header = IPv6Header(ROUTER_LL, dst, 58, 255, len(icmp))
        return build_frame(b"\x33\x33" + dst[12:], ROUTER_MAC, header, icmp)

    figures = []
    for frame, expected in ((ns_for(GUEST), 1), (ns_for(unknown), members)):
        samples = []
        for _ in range(rounds):
            start = time.perf_counter()
            actions = engine.handle_frame("up0", frame, 1.0)
            samples.append((time.perf_counter() - start) * 1e6)
        relayed = [a for a in actions if isinstance(a, Transmit) and a.interface != "up0"]
        assert len(relayed) == expected, (len(relayed), expected)
        figures.append(statistics.median(samples))
    return figures[0], figures[1]


def baseline(seconds: float) -> float:
    def noop(ingress: str, frame: bytes, now: float) -> list:
        return [frame]

    count = 0
    start = time.perf_counter()
    while time.perf_counter() < start + seconds:
        for _ in range(10_000):
            noop("up0", b"", 1.0)
        count += 10_000
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    call = baseline(args.seconds)
    print(f"{'baseline: empty Python call':<44} {call:>12,.0f} calls/s")
    unicast = rate(
        "unicast data frame to a known neighbor",
        make_engine().handle_frame,
        data_frame(),
        args.seconds,
    )
    relay = make_engine().handle_frame
    assert isinstance(relay("up0", ns_frame(), 1.0)[-1], Transmit)
    ns = rate("multicast NS, validated and rewritten", relay, ns_frame(), args.seconds)
    answer = early_answerer(make_engine())
    assert answer("up0", ns_frame(), 1.0) is not None
    rate("multicast NS answered early", answer, ns_frame(), args.seconds)
    print(
        f"targets: unicast >= 300,000/s ({unicast / 300_000:.2f}x), NS >= 50,000/s "
        f"({ns / 50_000:.2f}x); unicast costs {call / unicast:.1f} empty calls"
    )
    print(
        f"after 50 ms idle, median of 40: NS relayed {cold_us(relay, ns_frame()):.0f} us,"
        f" answered early {cold_us(answer, ns_frame()):.0f} us"
    )
    whole_us, one_us = table_costs_us()
    print(
        f"answer table published (main thread), 1000 neighbors: rebuilt whole {whole_us:.0f} us,"
        f" after one neighbor changed {one_us:.0f} us"
    )
    for members in (8, 64, 256, 512):
        placed, flooded = fanout_us(members)
        print(
            f"multicast NS into {members} members: placed target (one member) {placed:.0f} us,"
            f" unknown target (flooded) {flooded:.0f} us, {flooded / members:.1f} us per member"
        )


if __name__ == "__main__":
    main()
