"""The kernel fast path: unicast to learned neighbors forwarded by nftables, not Python.

One netdev table, `portier`, owned by portierd and programmed from the authoritative
state.  Per enabled member an ingress chain: frames that carried a VLAN tag are left
alone (never forwarded), ND is accepted (it goes on to the workers), a packet whose
source address is owned by another member or MAC (source validation, RFC 6620) is left
to the workers, which drop and count it and report the claim (the group's `p_` set holds
its protected addresses, the member's `a_` set the address and MAC pairs it owns: a
protected source not paired with the frame's MAC there goes up),
then a verdict map keyed by destination address jumps to that neighbor's chain: rewrite
both Ethernet addresses and `fwd` out of the egress; what the map misses (multicast,
unknown destinations) goes on to the workers too.  Neighbors whose data
bypasses userspace stay fresh through ND: the peers' unicast NUD probes still pass
through the workers.  The hop limit is never touched (`fwd ip6 to` would decrement it:
not used).  On downstream members, destinations outside the on-link prefixes go to the upstream's
router, as the engine does.  A miss leaves the frame to the workers (hold, solicit).

Programming is a diff between what the state wants and what was last programmed, applied
as one `nft -j -f -` transaction; an element whose neighbor changed keeps its map entry
and gets its chain rewritten (`fwd to` stores an ifindex, so a re-created interface must
be rewritten too).  When a batch fails the table is rebuilt whole.  When that fails too,
or nft cannot be run at all, the fast path turns itself off with the reason, removes the
table (over netlink when nft itself is what fails) so that nothing stale forwards, and
the workers forward everything; it is retried with exponential backoff and rebuilt whole
from the state once nft works again.  Every transaction of one FastPath holds its lock, so
callers may call concurrently.  Its public coroutines never raise: a fast path that fails
costs speed, never the supervisor's loops.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from portier.addresses import format_ipv6, format_mac
from portier.groups import Topology
from portier.neighbors import Neighbor, NeighborCache

log = logging.getLogger("portier.supervisor")

TABLE = "portier"
FAMILY = "netdev"
NFPROTO_NETDEV = 5  # nf_tables' number for the netdev family
NFT_TIMEOUT_S = 10.0  # an nft that takes longer is treated as one that cannot run
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 60.0
CHECK_INTERVAL_S = 10.0
OWNED_TYPE = ["ipv6_addr", "ether_addr"]
ND_TYPES = [
    "nd-router-solicit",
    "nd-router-advert",
    "nd-neighbor-solicit",
    "nd-neighbor-advert",
    "nd-redirect",
]


def _hex(name: str) -> str:
    return name.encode().hex()


def neighbor_chain(group: str, address: bytes) -> str:
    return "n_" + hashlib.sha1(group.encode() + address).hexdigest()[:16]


def _obj(kind: str, **fields: Any) -> dict[str, Any]:
    return {kind: {"family": FAMILY, "table": TABLE, **fields}}


def _payload(protocol: str, field_name: str) -> dict[str, Any]:
    return {"payload": {"protocol": protocol, "field": field_name}}


@dataclass(frozen=True)
class NeighborRule:
    egress: str
    egress_ifindex: int
    egress_mac: bytes
    neighbor_mac: bytes
    max_length: int | None  # frames longer go to the workers (for Packet Too Big)


@dataclass(frozen=True)
class IngressRule:
    group: str
    router_chain: str | None  # downstream only: where off-link destinations go


@dataclass
class Desired:
    groups: dict[str, tuple[tuple[bytes, int], ...]] = field(default_factory=dict)
    ingress: dict[str, IngressRule] = field(default_factory=dict)
    neighbors: dict[tuple[str, bytes], NeighborRule] = field(default_factory=dict)
    # The source check: group -> its protected addresses, member -> the (address, MAC)
    # pairs of them it owns.  A source in the first and not, with the frame's MAC, in
    # its ingress's second is a claim: the workers judge it.
    protected: dict[str, frozenset[bytes]] = field(default_factory=dict)
    owned: dict[str, frozenset[tuple[bytes, bytes]]] = field(default_factory=dict)


@dataclass(frozen=True)
class Egress:
    """What a neighbor's rule needs of the member it lives behind (values, not the live
    Interface, so that two frames compare equal only when nothing changed)."""

    name: str
    ifindex: int
    mac: bytes
    mtu: int
    group: str


@dataclass
class Frame:
    """The part of the model that depends on the topology (and the routers) only: which
    groups and members forward, and how.  A neighbor's own rules follow from it and from
    its entry alone (`neighbor_rule`, `validates`), so a changed neighbor can be
    programmed by itself while the frame stays equal."""

    groups: dict[str, tuple[tuple[bytes, int], ...]] = field(default_factory=dict)
    ingress: dict[str, IngressRule] = field(default_factory=dict)
    egresses: dict[str, Egress] = field(default_factory=dict)
    largest: dict[str, int] = field(default_factory=dict)  # group -> its largest MTU
    members: dict[str, tuple[str, ...]] = field(default_factory=dict)  # forwarding, per group
    ownership: dict[str, tuple[bool, str]] = field(default_factory=dict)  # (flag, upstream)
    routers: frozenset[tuple[str, bytes]] = frozenset()  # the routers ingress rules name


def neighbor_rule(frame: Frame, entry: Neighbor) -> NeighborRule | None:
    """How the kernel forwards to `entry`, or None when it does not."""
    egress = frame.egresses.get(entry.interface)
    if egress is None or egress.group != entry.group or entry.group not in frame.groups:
        return None
    largest = frame.largest[entry.group]
    return NeighborRule(
        egress.name,
        egress.ifindex,
        egress.mac,
        entry.mac,
        egress.mtu + 14 if egress.mtu < largest else None,
    )


def validates(frame: Frame, entry: Neighbor) -> bool:
    """Whether the kernel checks the sources that claim `entry`'s address (it is
    protected: ownership.protected, for a forwarding group)."""
    flag, upstream = frame.ownership.get(entry.group, (True, ""))
    return entry.group in frame.groups and (
        flag or (entry.is_router and entry.interface == upstream)
    )


def forwarding_frame(topology: Topology, neighbors: NeighborCache, now: float) -> Frame:
    frame = Frame()
    usable = {
        name: interface
        for name, interface in topology.interfaces.items()
        if interface.enabled and interface.ifindex and len(interface.mac) == 6
    }
    for name, interface in usable.items():
        if interface.group is not None:
            frame.egresses[name] = Egress(
                name, interface.ifindex, interface.mac, interface.mtu, interface.group
            )
    routers = set()
    for group in topology.groups.values():
        members = [name for name in group.members if name in usable]
        if len(members) < 2:
            continue
        frame.groups[group.name] = tuple(sorted(group.onlink_prefixes))
        frame.members[group.name] = tuple(members)
        frame.largest[group.name] = max(usable[m].mtu for m in members)
        frame.ownership[group.name] = (group.ownership, group.upstream or "")
    for group in topology.groups.values():
        if group.name not in frame.groups:
            continue
        router_chain = None
        if group.upstream in usable:
            router = neighbors.best_router(group.name, group.upstream, now)
            # A router chain only exists while its neighbor is programmed.
            if router is not None and neighbor_rule(frame, router) is not None:
                router_chain = neighbor_chain(group.name, router.address)
                routers.add((group.name, router.address))
        for name in frame.members[group.name]:
            frame.ingress[name] = IngressRule(
                group.name, None if name == group.upstream else router_chain
            )
    frame.routers = frozenset(routers)
    return frame


def desired_state(topology: Topology, neighbors: NeighborCache, now: float) -> Desired:
    frame = forwarding_frame(topology, neighbors, now)
    want = Desired(dict(frame.groups), dict(frame.ingress))
    protected: dict[str, set[bytes]] = {group: set() for group in frame.groups}
    owned: dict[str, set[tuple[bytes, bytes]]] = {name: set() for name in frame.ingress}
    for entry in neighbors:
        if validates(frame, entry):
            protected[entry.group].add(entry.address)
            ingress = frame.ingress.get(entry.interface)
            if ingress is not None and ingress.group == entry.group:
                owned[entry.interface].add((entry.address, entry.mac))
        rule = neighbor_rule(frame, entry)
        if rule is not None:
            want.neighbors[(entry.group, entry.address)] = rule
    want.protected = {group: frozenset(addresses) for group, addresses in protected.items()}
    want.owned = {name: frozenset(pairs) for name, pairs in owned.items()}
    return want


class NftUnusable(Exception):
    """nft could not be run at all (missing, not executable) or never finished."""


@dataclass(frozen=True)
class KernelView:
    """What one listing of the table says: map elements, chains, forwarded packets."""

    elements: dict[str, set[str]]
    chains: set[str]
    packets: int


def _listing_items(text: str) -> Iterator[Any]:
    """The items of `{"nftables": [item, ...]}`, decoded one at a time.

    One `json.loads` of a large table is a single C call that holds the GIL throughout,
    so a thread doing it would stall the event loop all the same; small calls let the
    interpreter hand the GIL back to the loop between them.
    """
    decoder = json.JSONDecoder()
    start = text.find("[", text.find('"nftables"'))
    if start < 0:
        raise ValueError("no nftables list in the listing")
    index = start + 1
    while True:
        while index < len(text) and text[index] in " \t\r\n,":
            index += 1
        if index >= len(text):
            raise ValueError("listing ends inside the list")
        if text[index] == "]":
            return
        item, index = decoder.raw_decode(text, index)
        yield item


def read_listing(text: str) -> KernelView:
    """Parse `nft -j list table`'s output (run off the event loop: it can be large)."""
    elements: dict[str, set[str]] = {}
    chains: set[str] = set()
    packets = 0
    for item in _listing_items(text):
        if "map" in item:
            elements[item["map"]["name"]] = {
                str(element[0]) for element in item["map"].get("elem", [])
            }
        elif "chain" in item:
            chains.add(item["chain"]["name"])
        elif "rule" in item:
            for expression in item["rule"].get("expr", []):
                if isinstance(expression, dict) and expression.get("counter"):
                    packets += int(expression["counter"].get("packets", 0))
    return KernelView(elements, chains, packets)


def drift_between(programmed: Desired, kernel: KernelView) -> int:
    """How many of the programmed maps differ from the kernel's, plus one if chains are
    missing (one sweep over every neighbor: run off the event loop too)."""
    drift = 0
    for group in programmed.groups:
        expected = {format_ipv6(address) for g, address in programmed.neighbors if g == group}
        if kernel.elements.get(f"g_{_hex(group)}") != expected:
            drift += 1
    expected_chains = {f"in_{_hex(n)}" for n in programmed.ingress} | {
        neighbor_chain(g, a) for g, a in programmed.neighbors
    }
    if not expected_chains <= kernel.chains:
        drift += 1
    return drift


def compare_listing(text: str, programmed: Desired) -> tuple[KernelView, int]:
    kernel = read_listing(text)
    return kernel, drift_between(programmed, kernel)


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "no message")


class FastPath:
    """The `portier` table of one network namespace, kept equal to the state while nft works.

    `active` says whether the kernel forwards now; when it does not, `reason` says why and
    `retry_at` (monotonic, the clock of the `now` arguments) when it is tried again.
    """

    def __init__(
        self,
        *,
        enabled: bool = True,
        nft: str = "nft",
        kernel_cleanup: bool = True,
        clock: Callable[[], float] = time.monotonic,
        nft_timeout_s: float = NFT_TIMEOUT_S,
    ) -> None:
        """`kernel_cleanup`: when nft cannot run, delete the table over netlink instead, in
        this process's network namespace (off only for a test whose nft runs elsewhere).
        `clock` is only read by `view()`, for the time left until the next retry."""
        self.nft_name = nft
        self.nft = shutil.which(nft)
        self.enabled = enabled
        self.kernel_cleanup = kernel_cleanup
        self.clock = clock
        self.nft_timeout_s = nft_timeout_s
        self.active = False
        self.reason = "" if enabled else "disabled by configuration"
        self.programmed = Desired()
        self.kernel_packets = 0
        self.retry_at: float | None = None
        self.backoff_s = RETRY_FIRST_S
        self.next_check: float | None = None
        self.stats = {
            "transactions": 0,
            "failed_transactions": 0,
            "failures": 0,
            "rebuilds": 0,
            "repairs": 0,
        }
        self._lock = asyncio.Lock()

    # --- running nft ---------------------------------------------------------------------

    async def _run(self, commands: list[dict[str, Any]] | None, *args: str) -> tuple[bool, str]:
        """(True, stdout) or (False, nft's error text); NftUnusable when nft cannot run."""
        if self.nft is None:
            raise NftUnusable("nft not found")
        argv = [self.nft, "-j", *args] if commands is None else [self.nft, "-j", "-f", "-"]
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise NftUnusable(f"cannot run {self.nft}: {exc.strerror or exc}") from None
        data = None if commands is None else json.dumps({"nftables": commands}).encode()
        try:
            out, err = await asyncio.wait_for(process.communicate(data), self.nft_timeout_s)
        except TimeoutError:
            await self._kill(process)
            limit = f"{self.nft_timeout_s:g} s"
            raise NftUnusable(f"{self.nft} did not finish within {limit}") from None
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()  # never leave it behind; the child watcher reaps it
            raise
        if process.returncode != 0:
            error = err.decode(errors="replace").strip()
            return False, error or f"nft exited with status {process.returncode}"
        return True, out.decode(errors="replace")

    @staticmethod
    async def _kill(process: asyncio.subprocess.Process) -> None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), 5.0)

    async def _apply(self, commands: list[dict[str, Any]]) -> str | None:
        """Apply one batch; None when it went in, else nft's complaint."""
        if not commands:
            return None
        self.stats["transactions"] += 1
        ok, error = await self._run(commands)
        if ok:
            return None
        self.stats["failed_transactions"] += 1
        log.warning("fast path transaction failed: %s", error)
        return error

    @staticmethod
    def _rebuild_commands(want: Desired) -> list[dict[str, Any]]:
        # `add table` succeeds whether or not it exists, so the delete always has a table.
        table = {"table": {"family": FAMILY, "name": TABLE}}
        return [
            {"add": table},
            {"delete": table},
            *FastPath._diff(Desired(), want, create_table=True),
        ]

    async def _rebuild(self, topology: Topology, neighbors: NeighborCache, now: float) -> bool:
        """Replace the whole table by what the state wants; off (False) when nft refuses."""
        want = desired_state(topology, neighbors, now)
        error = await self._apply(self._rebuild_commands(want))
        if error is None:
            self.programmed = want
            return True
        self.programmed = Desired()
        await self._delete_table()  # a half-built table must not forward
        self._fail(f"nftables rejected the ruleset: {_first_line(error)}", now)
        return False

    async def _delete_table(self) -> None:
        table = {"table": {"family": FAMILY, "name": TABLE}}
        await self._apply([{"add": table}, {"delete": table}])

    async def _delete_table_without_nft(self) -> None:
        """nft itself fails: remove the table over netlink, so nothing stale forwards."""
        if not self.kernel_cleanup:
            return
        try:
            await asyncio.to_thread(_netlink_delete_table)
        except Exception as exc:  # the kernel refused, or no nf_tables: nothing to remove
            log.debug("removing the fast path table over netlink: %s", exc)

    # --- failing and coming back ---------------------------------------------------------

    def _fail(self, reason: str, now: float) -> None:
        was_active = self.active
        self.active = False
        self.programmed = Desired()
        self.stats["failures"] += 1
        self.retry_at = now + self.backoff_s
        level = logging.ERROR if was_active or reason != self.reason else logging.DEBUG
        log.log(
            level,
            "fast path off: %s; the workers forward everything; retrying in %.0f s",
            reason,
            self.backoff_s,
        )
        self.reason = reason
        self.backoff_s = min(self.backoff_s * 2, RETRY_MAX_S)

    def _on(self, now: float) -> None:
        again = self.reason != ""
        self.active = True
        self.reason = ""
        self.retry_at = None
        self.backoff_s = RETRY_FIRST_S
        self.next_check = now + CHECK_INTERVAL_S
        if again:
            log.info("fast path on again: nftables table %s %s rebuilt", FAMILY, TABLE)
        else:
            log.info("fast path on: nftables table %s %s", FAMILY, TABLE)

    async def _bring_up(self, topology: Topology, neighbors: NeighborCache, now: float) -> None:
        """Build the table whole from the state (at start, on retry, when enabled)."""
        if self.nft is None or not os.access(self.nft, os.X_OK):
            # Installed or replaced since: look it up again, as at start.
            self.nft = shutil.which(self.nft_name) or self.nft
        if await self._rebuild(topology, neighbors, now):
            self._on(now)

    async def _guarded(self, what: str, now: float, step: Callable[[], Awaitable[None]]) -> None:
        """Run one transaction step under the lock; any failure turns the fast path off."""
        async with self._lock:
            try:
                await step()
            except NftUnusable as exc:
                await self._delete_table_without_nft()
                self._fail(str(exc), now)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug here costs the fast path, never the caller
                log.exception("fast path %s failed", what)
                with contextlib.suppress(Exception):
                    await self._delete_table()
                self._fail(f"internal error: {exc!r}", now)

    # --- lifecycle -----------------------------------------------------------------------

    async def start(
        self,
        topology: Topology | None = None,
        neighbors: NeighborCache | None = None,
        now: float | None = None,
    ) -> None:
        """Replace what a crashed run left by the table the state wants."""
        if not self.enabled:
            log.info("fast path off: %s", self.reason)
            await self._remove()  # a table an earlier run left must not forward either
            return
        moment = time.monotonic() if now is None else now
        topology = Topology() if topology is None else topology
        neighbors = NeighborCache() if neighbors is None else neighbors
        await self._guarded("start", moment, lambda: self._bring_up(topology, neighbors, moment))

    async def remove(self) -> None:
        """Take the table out of the kernel (on stop); nothing is retried after this."""
        await self._remove()

    async def _remove(self) -> None:
        async with self._lock:
            self.active = False
            self.programmed = Desired()
            self.retry_at = None
            try:
                await self._delete_table()
            except NftUnusable:
                await self._delete_table_without_nft()
            except asyncio.CancelledError:
                raise
            except Exception:  # on the way out: nothing more to do about it
                log.exception("removing the fast path table failed")

    async def set_enabled(
        self, enabled: bool, topology: Topology, neighbors: NeighborCache, now: float
    ) -> None:
        """Follow `[fastpath] enabled` on reload: off removes the table, on builds it."""
        if enabled == self.enabled:
            return
        self.enabled = enabled
        if not enabled:
            await self._remove()
            self.reason = "disabled by configuration"
            self._reset_backoff()
            log.info("fast path off: %s", self.reason)
            return
        self.reason = ""
        self._reset_backoff()
        await self._guarded("start", now, lambda: self._bring_up(topology, neighbors, now))

    def _reset_backoff(self) -> None:
        self.backoff_s = RETRY_FIRST_S
        self.retry_at = None

    # --- programming ---------------------------------------------------------------------

    async def sync(self, topology: Topology, neighbors: NeighborCache, now: float) -> None:
        """Program the difference between the state and the kernel; never raises."""
        await self._guarded("transaction", now, lambda: self._sync(topology, neighbors, now))

    async def _sync(self, topology: Topology, neighbors: NeighborCache, now: float) -> None:
        if not self.enabled:
            return
        if not self.active:
            if self.retry_at is not None and now >= self.retry_at:
                await self._bring_up(topology, neighbors, now)
            return
        want = desired_state(topology, neighbors, now)
        if await self._apply(self._diff(self.programmed, want)) is None:
            self.programmed = want
            return
        self.stats["rebuilds"] += 1
        await self._rebuild(topology, neighbors, now)

    async def maintain(self, topology: Topology, neighbors: NeighborCache, now: float) -> None:
        """The timer's call: retry when the backoff is due, check for drift every 10 s."""

        async def step() -> None:
            if not self.enabled:
                return
            if not self.active:
                if self.retry_at is not None and now >= self.retry_at:
                    await self._bring_up(topology, neighbors, now)
                return
            if self.next_check is None or now >= self.next_check:
                await self._check(topology, neighbors, now)

        await self._guarded("maintenance", now, step)

    # --- the batches ----------------------------------------------------------------------

    @staticmethod
    def _diff(have: Desired, want: Desired, create_table: bool = False) -> list[dict[str, Any]]:
        commands: list[dict[str, Any]] = []
        if create_table:
            commands.append({"add": {"table": {"family": FAMILY, "name": TABLE}}})
        # Leave, referrers before what they refer to: ingress chains (they use the maps),
        # then the maps and sets of groups that go, then map elements, then the
        # neighbor chains the elements pointed at.
        for name in have.ingress.keys() - want.ingress.keys():
            commands.append({"delete": _obj("chain", name=f"in_{_hex(name)}")})
            commands.append({"delete": _obj("set", name=f"a_{_hex(name)}")})
        for group in have.groups.keys() - want.groups.keys():
            for kind, prefix in (
                ("map", "g_"),
                ("set", "onlink_"),
                ("set", "p_"),
            ):
                commands.append({"delete": _obj(kind, name=f"{prefix}{_hex(group)}")})
        for key in have.neighbors.keys() - want.neighbors.keys():
            group, address = key
            if group in want.groups:
                element = _obj("element", name=f"g_{_hex(group)}", elem=[format_ipv6(address)])
                commands.append({"delete": element})
            commands.append({"delete": _obj("chain", name=neighbor_chain(group, address))})
        # Arrive: groups' maps and sets, neighbor chains, elements, ingress chains.
        for group, prefixes in want.groups.items():
            tag = _hex(group)
            if group not in have.groups:
                commands += [
                    {"add": _obj("map", name=f"g_{tag}", type="ipv6_addr", map="verdict")},
                    {
                        "add": _obj(
                            "set", name=f"onlink_{tag}", type="ipv6_addr", flags=["interval"]
                        )
                    },
                    {"add": _obj("set", name=f"p_{tag}", type="ipv6_addr")},
                ]
            if group not in have.groups or have.groups[group] != prefixes:
                elements = [{"prefix": {"addr": "fe80::", "len": 10}}] + [
                    {"prefix": {"addr": format_ipv6(prefix), "len": length}}
                    for prefix, length in prefixes
                ]
                commands += [
                    {"flush": _obj("set", name=f"onlink_{tag}")},
                    {"add": _obj("element", name=f"onlink_{tag}", elem=elements)},
                ]
        for key, rule in want.neighbors.items():
            old = have.neighbors.get(key)
            if old == rule:
                continue
            group, address = key
            chain = neighbor_chain(group, address)
            if old is None:
                commands.append({"add": _obj("chain", name=chain)})
            else:
                commands.append({"flush": _obj("chain", name=chain)})
            commands += FastPath._neighbor_rules(chain, rule)
            if old is None:
                commands.append(
                    {
                        "add": _obj(
                            "element",
                            name=f"g_{_hex(group)}",
                            elem=[[format_ipv6(address), {"goto": {"target": chain}}]],
                        )
                    }
                )
        for group, protected in want.protected.items():
            known = have.protected.get(group, frozenset()) if group in have.groups else frozenset()
            for verb, addresses in (("delete", known - protected), ("add", protected - known)):
                if addresses:
                    listed = sorted(format_ipv6(a) for a in addresses)
                    commands.append({verb: _obj("element", name=f"p_{_hex(group)}", elem=listed)})
        for name, owned in want.owned.items():
            had_pairs = have.owned.get(name) if name in have.ingress else None
            if had_pairs is None:
                commands.append({"add": _obj("set", name=f"a_{_hex(name)}", type=OWNED_TYPE)})
                had_pairs = frozenset()
            for verb, pairs in (("delete", had_pairs - owned), ("add", owned - had_pairs)):
                if pairs:
                    concat = [
                        {"concat": [format_ipv6(address), format_mac(mac)]}
                        for address, mac in sorted(pairs)
                    ]
                    commands.append({verb: _obj("element", name=f"a_{_hex(name)}", elem=concat)})
        for name, ingress in want.ingress.items():
            had = have.ingress.get(name)
            if had == ingress:
                continue
            chain = f"in_{_hex(name)}"
            if had is None:
                commands.append(
                    {
                        "add": _obj(
                            "chain",
                            name=chain,
                            type="filter",
                            hook="ingress",
                            dev=name,
                            prio=0,
                            policy="accept",
                        )
                    }
                )
            else:
                commands.append({"flush": _obj("chain", name=chain)})
            commands += FastPath._ingress_rules(chain, ingress)
        return commands

    @staticmethod
    def _neighbor_rules(chain: str, rule: NeighborRule) -> list[dict[str, Any]]:
        statements: list[list[dict[str, Any]]] = [
            # Never back out of the ingress: leave it to the workers, which count it.  (`iif`
            # compares an ifindex, cheaper than a name; the chain is rewritten when it changes.)
            [
                {"match": {"op": "==", "left": {"meta": {"key": "iif"}}, "right": rule.egress}},
                {"accept": None},
            ],
        ]
        if rule.max_length is not None:
            # Too big for the egress: the workers answer with Packet Too Big.
            statements.append(
                [
                    {
                        "match": {
                            "op": ">",
                            "left": {"meta": {"key": "length"}},
                            "right": rule.max_length,
                        }
                    },
                    {"accept": None},
                ]
            )
        statements.append(
            [
                {"counter": None},
                {
                    "mangle": {
                        "key": _payload("ether", "saddr"),
                        "value": format_mac(rule.egress_mac),
                    }
                },
                {
                    "mangle": {
                        "key": _payload("ether", "daddr"),
                        "value": format_mac(rule.neighbor_mac),
                    }
                },
                {"fwd": {"dev": rule.egress}},
            ]
        )
        return [{"add": _obj("rule", chain=chain, expr=expr)} for expr in statements]

    @staticmethod
    def _ingress_rules(chain: str, rule: IngressRule) -> list[dict[str, Any]]:
        tag = _hex(rule.group)
        daddr = _payload("ip6", "daddr")
        saddr = _payload("ip6", "saddr")
        statements: list[list[dict[str, Any]]] = [
            # A frame that carried a VLAN tag is not this member's: the kernel shows the
            # tag back in the Ethernet header here, so the type is not IPv6.  Left to the
            # stack (the host's own VLAN sub-interfaces), never forwarded.
            [
                {"match": {"op": "!=", "left": _payload("ether", "type"), "right": "ip6"}},
                {"accept": None},
            ],
            [
                {
                    "match": {
                        "op": "==",
                        "left": _payload("icmpv6", "type"),
                        "right": {"set": ND_TYPES},
                    }
                },
                {"accept": None},
            ],
            # A protected source this member does not own with this MAC (another
            # member's address, or a MAC spoofed behind the owner's own member): the
            # workers drop it, count it and check the owner.
            [
                {"match": {"op": "==", "left": saddr, "right": f"@p_{tag}"}},
                {
                    "match": {
                        "op": "!=",
                        "left": {"concat": [saddr, _payload("ether", "saddr")]},
                        "right": f"@a_{chain[3:]}",
                    }
                },
                {"accept": None},
            ],
            # Multicast is never in the map, so the lookup comes first: one rule fewer on
            # the way of every unicast frame.
            [{"vmap": {"key": daddr, "data": f"@g_{tag}"}}],
        ]
        if rule.router_chain:
            statements += [
                [
                    {
                        "match": {
                            "op": "==",
                            "left": daddr,
                            "right": {"prefix": {"addr": "ff00::", "len": 8}},
                        }
                    },
                    {"accept": None},
                ],
                [
                    {"match": {"op": "!=", "left": daddr, "right": f"@onlink_{tag}"}},
                    {"goto": {"target": rule.router_chain}},
                ],
            ]
        return [{"add": _obj("rule", chain=chain, expr=expr)} for expr in statements]

    # --- reading back --------------------------------------------------------------------

    async def check(self, topology: Topology, neighbors: NeighborCache, now: float) -> int:
        """Compare the kernel with what was programmed; repair and count any drift."""
        drift = 0

        async def step() -> None:
            nonlocal drift
            if self.enabled and self.active:
                drift = await self._check(topology, neighbors, now)

        await self._guarded("check", now, step)
        return drift

    async def _check(self, topology: Topology, neighbors: NeighborCache, now: float) -> int:
        self.next_check = now + CHECK_INTERVAL_S
        ok, out = await self._run(None, "list", "table", FAMILY, TABLE)
        if not ok:
            log.warning("fast path table unreadable (%s): rebuilding", _first_line(out))
            drift = 1  # gone, most likely: someone flushed the ruleset
        else:
            try:
                # `programmed` only changes under the lock, which this holds meanwhile.
                kernel, drift = await asyncio.to_thread(compare_listing, out, self.programmed)
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                log.warning("fast path listing unreadable (%r): rebuilding", exc)
                drift = 1
            else:
                self.kernel_packets = kernel.packets
                if not drift:
                    return 0
                log.warning("fast path drifted from the state (%d differences): rebuilding", drift)
        self.stats["repairs"] += 1
        await self._rebuild(topology, neighbors, now)
        return drift

    async def packets(self) -> int:
        """Frames the kernel forwarded through the neighbor chains, as of the last check."""
        return self.kernel_packets

    def view(self) -> dict[str, Any]:
        retry_in_s = None
        if self.retry_at is not None and self.enabled and not self.active:
            retry_in_s = max(0.0, round(self.retry_at - self.clock(), 3))
        return {
            "enabled": self.enabled,
            "active": self.active,
            "reason": self.reason,
            "retry_in_s": retry_in_s,
            "kernel_packets": self.kernel_packets,
            "groups": len(self.programmed.groups),
            "members": len(self.programmed.ingress),
            "neighbors": len(self.programmed.neighbors),
            **self.stats,
        }


def _netlink_delete_table() -> None:
    """Delete the table with nf_tables' own netlink call: for when nft cannot be run."""
    from pyroute2.netlink.exceptions import NetlinkError
    from pyroute2.nftables.main import NFTables

    socket = NFTables(nfgen_family=NFPROTO_NETDEV)
    try:
        socket.table("del", name=TABLE)
    except NetlinkError as exc:
        if exc.code != errno.ENOENT:
            raise
    finally:
        socket.close()
