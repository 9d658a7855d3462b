"""The kernel fast path: unicast to learned neighbors forwarded by nftables, not Python.

One netdev table, `portier`, owned by portierd and programmed from the authoritative
state.  Per enabled member an ingress chain: ND is accepted (it goes on to the workers),
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
be rewritten too).  When a batch fails the table is rebuilt whole; when that fails too,
or nft is missing, the fast path turns itself off and the workers forward everything.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import shutil
from dataclasses import dataclass, field
from typing import Any

from portier.addresses import format_ipv6, format_mac
from portier.groups import Topology
from portier.neighbors import NeighborCache

log = logging.getLogger("portier.supervisor")

TABLE = "portier"
FAMILY = "netdev"
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


def desired_state(topology: Topology, neighbors: NeighborCache, now: float) -> Desired:
    want = Desired()
    usable = {
        name: interface
        for name, interface in topology.interfaces.items()
        if interface.enabled and interface.ifindex and len(interface.mac) == 6
    }
    for group in topology.groups.values():
        members = [name for name in group.members if name in usable]
        if len(members) < 2:
            continue
        want.groups[group.name] = tuple(sorted(group.onlink_prefixes))
        router_chain = None
        if group.upstream in usable:
            router = neighbors.best_router(group.name, group.upstream, now)
            if router is not None:
                router_chain = neighbor_chain(group.name, router.address)
        for name in members:
            want.ingress[name] = IngressRule(
                group.name, None if name == group.upstream else router_chain
            )
    for entry in neighbors:
        egress = usable.get(entry.interface)
        if egress is None or egress.group != entry.group or entry.group not in want.groups:
            continue
        largest = max(usable[m].mtu for m in topology.groups[entry.group].members if m in usable)
        want.neighbors[(entry.group, entry.address)] = NeighborRule(
            egress.name,
            egress.ifindex,
            egress.mac,
            entry.mac,
            egress.mtu + 14 if egress.mtu < largest else None,
        )
    # A router chain only exists while its neighbor is programmed.
    for name, rule in list(want.ingress.items()):
        if rule.router_chain and not any(
            neighbor_chain(g, a) == rule.router_chain for g, a in want.neighbors
        ):
            want.ingress[name] = IngressRule(rule.group, None)
    return want


class FastPath:
    def __init__(self, *, enabled: bool = True, nft: str = "nft") -> None:
        self.nft = shutil.which(nft)
        self.enabled = enabled and self.nft is not None
        self.reason = (
            "disabled by configuration"
            if not enabled
            else "nft not found"
            if self.nft is None
            else ""
        )
        self.programmed = Desired()
        self.active = False
        self.stats = {"transactions": 0, "failures": 0, "rebuilds": 0, "repairs": 0}

    # --- running nft ---------------------------------------------------------------------

    async def _run(self, commands: list[dict[str, Any]] | None, *args: str) -> tuple[bool, str]:
        assert self.nft is not None
        argv = [self.nft, "-j", *args] if commands is None else [self.nft, "-j", "-f", "-"]
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        data = None if commands is None else json.dumps({"nftables": commands}).encode()
        out, err = await process.communicate(data)
        if process.returncode != 0:
            return False, err.decode(errors="replace").strip()
        return True, out.decode(errors="replace")

    async def _apply(self, commands: list[dict[str, Any]]) -> bool:
        if not commands:
            return True
        self.stats["transactions"] += 1
        ok, error = await self._run(commands)
        if not ok:
            self.stats["failures"] += 1
            log.warning("fast path transaction failed: %s", error)
        return ok

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Remove what a crashed run left, and check that nftables works here."""
        if not self.enabled:
            log.info("fast path off: %s", self.reason)
            return
        await self.remove()
        if not await self._apply([{"add": {"table": {"family": FAMILY, "name": TABLE}}}]):
            self._give_up("cannot create the nftables table")
            return
        self.active = True
        self.programmed = Desired()
        log.info("fast path on: nftables table %s %s", FAMILY, TABLE)

    async def remove(self) -> None:
        if self.nft is None:
            return
        ok, _ = await self._run(None, "list", "table", FAMILY, TABLE)
        if ok:
            await self._apply([{"delete": {"table": {"family": FAMILY, "name": TABLE}}}])
        self.active = False
        self.programmed = Desired()

    def _give_up(self, reason: str) -> None:
        self.active = False
        self.enabled = False
        self.reason = reason
        log.error("fast path off: %s; the workers forward everything", reason)

    # --- programming ---------------------------------------------------------------------

    async def sync(self, topology: Topology, neighbors: NeighborCache, now: float) -> None:
        if not self.active:
            return
        want = desired_state(topology, neighbors, now)
        if await self._apply(self._diff(self.programmed, want)):
            self.programmed = want
            return
        self.stats["rebuilds"] += 1
        rebuild = [
            {"delete": {"table": {"family": FAMILY, "name": TABLE}}},
            *self._diff(Desired(), want, create_table=True),
        ]
        if await self._apply(rebuild):
            self.programmed = want
            return
        await self.remove()
        self._give_up("nftables rejected the ruleset")

    def _diff(
        self, have: Desired, want: Desired, create_table: bool = False
    ) -> list[dict[str, Any]]:
        commands: list[dict[str, Any]] = []
        if create_table:
            commands.append({"add": {"table": {"family": FAMILY, "name": TABLE}}})
        # Leave, referrers before what they refer to: ingress chains (they use the maps),
        # then the maps and sets of groups that go, then map elements, then the
        # neighbor chains the elements pointed at.
        for name in have.ingress.keys() - want.ingress.keys():
            commands.append({"delete": _obj("chain", name=f"in_{_hex(name)}")})
        for group in have.groups.keys() - want.groups.keys():
            for kind, prefix in (("map", "g_"), ("set", "onlink_")):
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
            commands += self._neighbor_rules(chain, rule)
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
            commands += self._ingress_rules(chain, ingress)
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
        statements: list[list[dict[str, Any]]] = [
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

    async def listing(self) -> list[dict[str, Any]] | None:
        if not self.active:
            return None
        ok, out = await self._run(None, "list", "table", FAMILY, TABLE)
        if not ok:
            return None
        try:
            return json.loads(out).get("nftables", [])
        except ValueError:
            return None

    async def check(self, topology: Topology, neighbors: NeighborCache, now: float) -> int:
        """Compare the kernel's maps with the state; repair and count any drift."""
        items = await self.listing()
        if items is None:
            return 0
        kernel_elements: dict[str, set[str]] = {}
        chains = set()
        for item in items:
            if "map" in item:
                kernel_elements[item["map"]["name"]] = {
                    str(element[0]) for element in item["map"].get("elem", [])
                }
            elif "chain" in item:
                chains.add(item["chain"]["name"])
        drift = 0
        for group in self.programmed.groups:
            expected = {
                format_ipv6(address) for g, address in self.programmed.neighbors if g == group
            }
            if kernel_elements.get(f"g_{_hex(group)}") != expected:
                drift += 1
        expected_chains = {f"in_{_hex(n)}" for n in self.programmed.ingress} | {
            neighbor_chain(g, a) for g, a in self.programmed.neighbors
        }
        if not expected_chains <= chains:
            drift += 1
        if drift:
            self.stats["repairs"] += 1
            log.warning("fast path drifted from the state (%d differences): rebuilding", drift)
            self.programmed = Desired(groups={}, ingress={}, neighbors={})
            await self._apply(
                [
                    {"delete": {"table": {"family": FAMILY, "name": TABLE}}},
                    {"add": {"table": {"family": FAMILY, "name": TABLE}}},
                ]
            )
            await self.sync(topology, neighbors, now)
        return drift

    async def packets(self) -> int:
        """Frames the kernel forwarded through the neighbor chains, in all."""
        items = await self.listing()
        total = 0
        for item in items or []:
            for expression in item.get("rule", {}).get("expr", []):
                if expression.get("counter"):
                    total += expression["counter"].get("packets", 0)
        return total

    def view(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "active": self.active,
            "reason": self.reason,
            "groups": len(self.programmed.groups),
            "members": len(self.programmed.ingress),
            "neighbors": len(self.programmed.neighbors),
            **self.stats,
        }
