"""The BPF kernel data path: the tc program on every forwarding member, fed from the cache.

What the kernel should do comes from the same model as the nftables path
(fastpath.desired_state: which members forward, which neighbors, the source checks, the
on-link prefixes, the router for off-link destinations), packed into the maps the
program reads (supervisor/bpf/portier_tc.c documents each).  Programming is a diff of
map entries and of the interfaces the program is attached to, applied entry by entry.
While the topology's part of the model (fastpath.Frame) stays the same, only the
neighbors the cache's journal names are packed and compared, so a new neighbor costs
its own few map writes whatever the size of the cache; a changed frame compares all.
Every CHECK_INTERVAL_S the maps and the attachments are read back and compared with
what was programmed; any drift is repaired by writing everything again.  `liveness` is
pushed forward on every timer tick: if the supervisor stalls, the kernel stops
answering NS on its behalf within LIVENESS_S.

Failures raise BpfError: the caller (kernelpath.py) falls back to nftables.  Nothing
here is retried by itself.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from portier.answers import ANSWER_FRESH_S
from portier.groups import Topology
from portier.neighbors import Neighbor, NeighborCache
from portier.supervisor import tchook
from portier.supervisor.bpfload import SOURCE, BpfError, TcObject, compile_object
from portier.supervisor.bpfmaps import BpfMap
from portier.supervisor.fastpath import Frame, forwarding_frame, neighbor_rule, validates

log = logging.getLogger("portier.supervisor")

CHECK_INTERVAL_S = 10.0
INCREMENTAL_MAX = 1024  # more changed neighbors than this: compare the whole state
LIVENESS_S = 3.0
NS_PER_S = 1_000_000_000
MEMBER_ENABLED = 1
MEMBER_HAS_ROUTER = 2
ROUTE_CHECKING = 1
ROUTE_ROUTER = 2
ROUTE_PEER = 4
ROUTE_FLAGS_AT = 20  # where a packed route's flags start (low byte first)
# name -> (key size, value size), as in portier_tc.c
MAP_SIZES = {
    "members": (4, 32),
    "routes": (20, 40),
    "owners": (20, 12),
    "onlink": (24, 1),
    "liveness": (4, 8),
    "answered": (4, 8),
    "forwarded": (4, 8),
    "answers_limited": (4, 8),
    "tagged": (4, 8),
}
PROGRAMMED_MAPS = ("members", "routes", "owners", "onlink")
PRESENT = b"\x01"
ZERO_KEY = struct.pack("<I", 0)


def pack_member(group: int, flags: int, mac: bytes, router: bytes) -> bytes:
    return struct.pack("<II6s2x16s", group, flags, mac, router)


def pack_route(ifindex: int, mtu: int, dmac: bytes, smac: bytes, flags: int, fresh: int) -> bytes:
    return struct.pack("<II6s6sI4x4xQ", ifindex, mtu, dmac, smac, flags, fresh)


def pack_prefix(group: int, prefix: bytes, length: int) -> bytes:
    masked = int.from_bytes(prefix, "big") & ~((1 << (128 - length)) - 1) & ((1 << 128) - 1)
    return struct.pack("<II16s", 32 + length, group, masked.to_bytes(16, "big"))


def build() -> Path:
    """Compile the program beside its source: the install-time build (make's set-up)."""
    return compile_object(SOURCE.with_suffix(".o"))


@dataclass
class Programmed:
    """Map name -> {packed key: packed value}, and where the program is attached."""

    maps: dict[str, dict[bytes, bytes]] = field(
        default_factory=lambda: {name: {} for name in PROGRAMMED_MAPS}
    )
    attached: set[int] = field(default_factory=set)


class GroupNumbers:
    """The program knows groups by number: stable for the life of the daemon, never 0."""

    def __init__(self, known: dict[str, int] | None = None) -> None:
        self._numbers: dict[str, int] = dict(known or {})

    def __call__(self, group: str) -> int:
        if group not in self._numbers:
            self._numbers[group] = max(self._numbers.values(), default=0) + 1
        return self._numbers[group]


Peers = dict[int, bool]  # egress ifindex -> its veth peer lives in another namespace


def _frame_entries(frame: Frame, number: Callable[[str], int], result: Programmed) -> None:
    """The members, prefixes and attachments: what the frame alone decides."""
    routers = dict(frame.routers)
    for name, rule in frame.ingress.items():
        egress = frame.egresses[name]
        router = routers.get(rule.group, b"") if rule.router_chain else b""
        flags = MEMBER_ENABLED | (MEMBER_HAS_ROUTER if router else 0)
        result.maps["members"][struct.pack("<I", egress.ifindex)] = pack_member(
            number(rule.group), flags, egress.mac, router.ljust(16, b"\0")
        )
        result.attached.add(egress.ifindex)
    for group, prefixes in frame.groups.items():
        for prefix, length in prefixes:
            result.maps["onlink"][pack_prefix(number(group), prefix, length)] = PRESENT


def route_key(number: int, address: bytes) -> bytes:
    return struct.pack("<I16s", number, address)


def pack_owner(ifindex: int, mac: bytes) -> bytes:
    return struct.pack("<I6s2x", ifindex, mac)


def neighbor_entries(
    frame: Frame, entry: Neighbor, peers: Peers
) -> tuple[bytes | None, bytes | None]:
    """One neighbor's share of the maps, both keyed by (group, address): its packed
    route (None: not forwarded to) and its owner for the source check (None: none)."""
    owner = None
    if validates(frame, entry):
        egress = frame.egresses.get(entry.interface)
        owner = pack_owner(egress.ifindex if egress else 0, entry.mac)
    rule = neighbor_rule(frame, entry)
    if rule is None:
        return None, owner
    flags = (
        (ROUTE_CHECKING if entry.check_until else 0)
        | (ROUTE_ROUTER if entry.is_router else 0)
        | (ROUTE_PEER if peers.get(rule.egress_ifindex) else 0)
    )
    route = pack_route(
        rule.egress_ifindex,
        frame.egresses[rule.egress].mtu,
        rule.neighbor_mac,
        rule.egress_mac,
        flags,
        # answers.py answers while now - last_seen <= ANSWER_FRESH_S, the program
        # while now < fresh: one nanosecond more says the same.
        int((entry.last_seen + ANSWER_FRESH_S) * NS_PER_S) + 1,
    )
    return route, owner


def frame_peers(frame: Frame, peer_elsewhere: Callable[[int], bool]) -> Peers:
    return {egress.ifindex: peer_elsewhere(egress.ifindex) for egress in frame.egresses.values()}


def wanted(
    topology: Topology,
    neighbors: NeighborCache,
    now: float,
    number: Callable[[str], int],
    peer_elsewhere: Callable[[int], bool] = lambda ifindex: False,
) -> Programmed:
    """The maps' contents for the state: the nft path's model, packed for the program."""
    frame = forwarding_frame(topology, neighbors, now)
    return wanted_in(frame, neighbors, number, frame_peers(frame, peer_elsewhere))


def wanted_in(
    frame: Frame, neighbors: NeighborCache, number: Callable[[str], int], peers: Peers
) -> Programmed:
    result = Programmed()
    _frame_entries(frame, number, result)
    routes, owners = result.maps["routes"], result.maps["owners"]
    for entry in neighbors:
        route, owner = neighbor_entries(frame, entry, peers)
        key = route_key(number(entry.group), entry.address)
        if route is not None:
            routes[key] = route
        if owner is not None:
            owners[key] = owner
    return result


def possible_cpus() -> int:
    """CPUs a per-CPU map has a slot for (possible, not just online)."""
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    return max(int(part.split("-")[-1]) for part in text.split(",")) + 1


class BpfPath:
    """The program, its maps and attachments in this network namespace."""

    def __init__(
        self,
        object_path: Path | None = None,
        peer_elsewhere: Callable[[int], bool] = lambda ifindex: False,
    ) -> None:
        """`peer_elsewhere(ifindex)`: the interface is a veth whose peer is in another
        network namespace (the link table knows), so frames may go straight to the peer."""
        self.object_path = object_path
        self.peer_elsewhere = peer_elsewhere
        self.program: TcObject | None = None
        self.maps: dict[str, BpfMap] = {}
        self.programmed = Programmed()
        self.prog_id = 0
        self.numbers = GroupNumbers()
        self.next_check: float | None = None
        self._last_frame: tuple[Frame, Peers] | None = None
        self._journaled: NeighborCache | None = None  # whose journal this path reads
        self.stats = {"updates": 0, "repairs": 0, "attaches": 0, "full_syncs": 0}

    # --- loading ---------------------------------------------------------------------------

    def _object(self) -> Path:
        """The compiled object: the one built at install time, else compiled now."""
        built = self.object_path or SOURCE.with_suffix(".o")
        if built.exists() and built.stat().st_mtime >= SOURCE.stat().st_mtime:
            return built
        target = Path(tempfile.mkdtemp(prefix="portier-bpf-")) / "portier_tc.o"
        try:
            return compile_object(target)
        except FileNotFoundError as exc:
            raise BpfError(2, f"no compiled BPF object and no clang to build it: {exc}") from None
        except subprocess.CalledProcessError as exc:
            message = (exc.stderr or "").strip().splitlines()[-1:] or ["failed"]
            raise BpfError(8, f"clang could not build the BPF program: {message[0]}") from None

    def load(self) -> None:
        """Build if need be, load (the verifier runs here) and find the maps; BpfError."""
        self.adopt(TcObject(self._object()))

    def adopt(self, program: TcObject) -> None:
        """Program these maps (those of a loaded object) from now on."""
        self.program = program
        self.maps = {
            name: BpfMap(name, program.map_fd(name), *sizes) for name, sizes in MAP_SIZES.items()
        }

    @staticmethod
    def clean_up_everywhere() -> int:
        """Take Portier's filter off every interface here (what a crashed run left)."""
        return sum(tchook.detach(index) for index, _name in socket.if_nameindex())

    # --- programming -----------------------------------------------------------------------

    async def start(self, topology: Topology, neighbors: NeighborCache, now: float) -> None:
        await asyncio.to_thread(self._start, topology, neighbors, now)

    def _start(self, topology: Topology, neighbors: NeighborCache, now: float) -> None:
        left = self.clean_up_everywhere()
        if left:
            log.info("BPF path: removed %d filters an earlier run left", left)
        self.load()
        self.beat(now)
        neighbors.keep_journal()
        self._journaled = neighbors
        self.sync(topology, neighbors, now, full=True)

    def sync(
        self, topology: Topology, neighbors: NeighborCache, now: float, *, full: bool = False
    ) -> None:
        """Write what differs between the state and what was programmed.

        While the frame (the topology's part, fastpath.Frame) is what it was last time,
        only the neighbors the cache's journal names are looked at: a new neighbor costs
        its own entries, whatever the size of the cache.  Otherwise, and when `full`,
        the whole state is compared."""
        # A full sync leaves the journal alone: it may run in a thread (the check), and
        # what the journal names meanwhile is only written again, the same.
        changed = None if full else neighbors.take_journal()
        frame = forwarding_frame(topology, neighbors, now)
        peers = frame_peers(frame, self.peer_elsewhere)
        if changed is None or self._last_frame != (frame, peers) or len(changed) > INCREMENTAL_MAX:
            want = wanted_in(frame, neighbors, self.numbers, peers)
            self.write_maps(want)
            self._attach(want.attached)
            self.stats["full_syncs"] += 1
        else:
            for group, address in changed:
                self._write_neighbor(frame, peers, neighbors, group, address)
        self._last_frame = (frame, peers)

    def _write_neighbor(
        self, frame: Frame, peers: Peers, neighbors: NeighborCache, group: str, address: bytes
    ) -> None:
        entry = neighbors.get(group, address)
        route, owner = neighbor_entries(frame, entry, peers) if entry else (None, None)
        key = route_key(self.numbers(group), address)
        self._put("routes", key, route)
        self._put("owners", key, owner)

    def _put(self, name: str, key: bytes, value: bytes | None) -> None:
        """One entry as it should be (None: absent), written only when it differs."""
        programmed = self.programmed.maps[name]
        if programmed.get(key) == value:
            return
        if value is None:
            self.maps[name].delete(key)
            del programmed[key]
        else:
            self.maps[name].update(key, value)
            programmed[key] = value
            self.stats["updates"] += 1

    def write_maps(self, want: Programmed) -> None:
        """The map entries that differ from what was programmed, written or deleted."""
        for name in PROGRAMMED_MAPS:
            bpf_map, old, new = self.maps[name], self.programmed.maps[name], want.maps[name]
            for key, value in new.items():
                if old.get(key) != value:
                    bpf_map.update(key, value)
                    old[key] = value
                    self.stats["updates"] += 1
            for key in [key for key in old if key not in new]:
                bpf_map.delete(key)
                del old[key]

    def _attach(self, wanted_ifindexes: set[int]) -> None:
        assert self.program is not None
        attached = self.programmed.attached
        for ifindex in sorted(wanted_ifindexes - attached):
            self.prog_id = tchook.attach(ifindex, self.program.prog_fd)
            attached.add(ifindex)
            self.stats["attaches"] += 1
        for ifindex in sorted(attached - wanted_ifindexes):
            tchook.detach(ifindex)
            attached.discard(ifindex)

    def beat(self, now: float) -> None:
        """The supervisor is alive: the kernel may answer NS for LIVENESS_S more."""
        until = int((now + LIVENESS_S) * NS_PER_S)
        self.maps["liveness"].update(ZERO_KEY, struct.pack("<Q", until))

    def maintain(self, topology: Topology, neighbors: NeighborCache, now: float) -> int:
        """The timer's call: the heartbeat, and the drift check when it is due."""
        self.beat(now)
        if self.next_check is not None and now < self.next_check:
            return 0
        return self.check(topology, neighbors, now)

    def check(self, topology: Topology, neighbors: NeighborCache, now: float) -> int:
        """Compare the kernel with what was programmed; repair and count any drift."""
        self.next_check = now + CHECK_INTERVAL_S
        drift = 0
        for name in PROGRAMMED_MAPS:
            kernel, programmed = self.maps[name].items(), self.programmed.maps[name]
            drift += len(kernel.keys() ^ programmed.keys())
            drift += sum(1 for key, value in kernel.items() if programmed.get(key, value) != value)
        for ifindex in self.programmed.attached:
            drift += tchook.attached(ifindex) != self.prog_id
        if drift:
            log.warning("BPF path drifted from the state (%d differences): rewriting", drift)
            self.stats["repairs"] += 1
            for name in PROGRAMMED_MAPS:
                for key in self.maps[name].list_keys():
                    self.maps[name].delete(key)
            self.programmed = Programmed()
            self.sync(topology, neighbors, now, full=True)
        return drift

    def counter(self, name: str) -> int:
        """A per-CPU counter, summed: `answered` (NAs sent), `forwarded` (frames
        redirected), `answers_limited` (NAs a member's empty bucket held back), `tagged`
        (VLAN-tagged frames that arrived on a member: never forwarded)."""
        raw = self.maps[name].lookup(ZERO_KEY, 8 * possible_cpus()) or b""
        return sum(value for (value,) in struct.iter_unpack("<Q", raw))

    def remove(self) -> None:
        """Detach everywhere and let the maps go with the program."""
        for ifindex in self.programmed.attached:
            try:
                tchook.detach(ifindex)
            except BpfError as exc:
                log.warning("detaching the BPF program from ifindex %d: %s", ifindex, exc)
        self.programmed = Programmed()
        self._last_frame = None
        if self._journaled is not None:
            self._journaled.keep_journal(False)  # nobody would take it any more
            self._journaled = None
        if self.program is not None:
            self.program.close()
            self.program = None

    def view(self) -> dict[str, Any]:
        maps = self.programmed.maps
        return {
            "members": len(maps["members"]),
            "neighbors": len(maps["routes"]),
            "peer_routes": sum(
                1 for v in maps["routes"].values() if v[ROUTE_FLAGS_AT] & ROUTE_PEER
            ),
            "attached": len(self.programmed.attached),
            "answered": self.counter("answered") if self.program is not None else 0,
            "kernel_packets": self.counter("forwarded") if self.program is not None else 0,
            "answers_limited": (self.counter("answers_limited") if self.program is not None else 0),
            "vlan_tagged": self.counter("tagged") if self.program is not None else 0,
            **self.stats,
        }
