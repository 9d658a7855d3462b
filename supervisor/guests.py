"""Pattern-bound guests: interfaces bound while their link exists, released when it goes.

A group's member pattern (fnmatch: `vnet*`, `tap?`, `veth[0-9]*`) binds every interface
whose name matches, from the supervisor's table of links (links.py): one that appears is
bound to the group and its worker started; one that is deleted or renamed away, or whose
pattern was removed, is released, its neighbors forgotten and its worker stopped; a name
re-created is bound again.  The rules: an exact name beats a pattern (an interface bound
by name, from the configuration or `portierctl bind`, is never touched here); when
patterns of two groups match one name, the first group (the configuration file's order,
then the order groups were created) wins and a warning event says so; a binding stays
with the pattern that made it while that pattern exists.  Loopback links are never
bound.  `plan_guests` is the pure rule; `Guests` applies it to the state and the pool.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

from portier.groups import Topology, check_interface_name
from portier.supervisor.commit import Committer
from portier.supervisor.links import Link
from portier.supervisor.state import Change, ProxyState
from portier.supervisor.workerpool import WorkerPool

log = logging.getLogger("portier.supervisor")


@dataclass
class GuestPlan:
    bind: list[tuple[str, str, str]] = field(default_factory=list)  # (name, group, pattern)
    release: list[str] = field(default_factory=list)
    # name -> every (group, pattern) that matched it, the winner first
    overlaps: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.bind or self.release)


def plan_guests(topology: Topology, present: Iterable[str]) -> GuestPlan:
    """What to bind and release so that the patterns hold exactly the links present."""
    present = set(present)
    plan = GuestPlan()
    for name, interface in topology.interfaces.items():
        if interface.bound_by is None:
            continue
        owner = topology.groups.get(interface.group) if interface.group else None
        if name not in present or owner is None or interface.bound_by not in owner.patterns:
            plan.release.append(name)
    released = set(plan.release)
    for name in sorted(present):
        if name in topology.interfaces and name not in released:
            continue
        matches = topology.matching_patterns(name)
        if not matches or not check_interface_name(name):
            continue
        group, pattern = matches[0]
        plan.bind.append((name, group, pattern))
        if len({g for g, _ in matches}) > 1:
            plan.overlaps[name] = matches
    return plan


Background = Callable[[Coroutine[Any, Any, Any], str], object]


class Guests:
    def __init__(
        self,
        state: ProxyState,
        pool: WorkerPool,
        committer: Committer,
        background: Background,
    ) -> None:
        self.state = state
        self.pool = pool
        self.committer = committer
        self.background = background
        self.present: set[str] = set()
        self.bound_total = 0
        self.released_total = 0

    async def links_changed(self, links: dict[int, Link]) -> None:
        """The link follower's hand-off: apply the patterns and commit what changed."""
        self.present = {link.name for link in links.values() if not link.loopback}
        changes, summary = await self.apply()
        if summary:
            await self.committer.commit("guests", changes, **summary)

    async def apply(self) -> tuple[list[Change], dict[str, Any]]:
        """Bind and release by the patterns; the changes, not yet committed, and a summary."""
        topology = self.state.topology
        plan = plan_guests(topology, self.present)
        changes: list[Change] = []
        for name in plan.release:
            changes += self.state.forget_interface(name)
            topology.release(name)
            self.background(self.pool.stop(name), f"stopping the worker for {name}")
        for name, group, pattern in plan.bind:
            if not (topology.bind(name) and topology.add_to_group(name, group)):
                continue
            topology.interfaces[name].bound_by = pattern
        for name, matches in plan.overlaps.items():
            log.warning(
                "%s matches patterns of groups %s; bound to %s, the first",
                name,
                ", ".join(f"{g} ({p})" for g, p in matches),
                matches[0][0],
            )
            self.committer.publish(
                "warning",
                what="pattern_overlap",
                interface=name,
                group=matches[0][0],
                matches=[list(m) for m in matches],
            )
        for name, _group, _pattern in plan.bind:
            if name in topology.interfaces:
                await self.pool.start(name)
        self.bound_total += len(plan.bind)
        self.released_total += len(plan.release)
        if not plan:
            return changes, {}
        if plan.bind or plan.release:
            log.info(
                "guests: bound %s; released %s",
                ", ".join(n for n, _, _ in plan.bind) or "none",
                ", ".join(plan.release) or "none",
            )
        return changes, {
            "bound": [[n, g, p] for n, g, p in plan.bind],
            "released": plan.release,
        }
