"""Configuration reload as a diff: change only what the configuration changed.

The running state may hold runtime changes made through the control API; a reload
applies the difference between the configuration the state was built from and the new
one, so those runtime changes stay unless the new configuration contradicts them.
Interfaces and groups the diff does not touch keep their workers and their neighbors.
Member patterns are diffed the same way; which interfaces they bind follows from the
links present (supervisor/guests.py), not from this plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from portier.groups import Topology, is_pattern


@dataclass
class ReloadPlan:
    release_groups: list[str] = field(default_factory=list)
    release_interfaces: list[str] = field(default_factory=list)
    create_groups: list[str] = field(default_factory=list)
    bind_interfaces: list[str] = field(default_factory=list)
    # (interface, group, as upstream)
    memberships: list[tuple[str, str, bool]] = field(default_factory=list)
    unset_upstreams: list[str] = field(default_factory=list)
    remove_patterns: list[str] = field(default_factory=list)
    # (pattern, group)
    add_patterns: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {key: value for key, value in vars(self).items() if value}


def plan_reload(
    topology: Topology, old_groups: list[dict[str, Any]], new_groups: list[dict[str, Any]]
) -> ReloadPlan:
    plan = ReloadPlan()
    old = {g["name"]: g for g in old_groups}
    new = {g["name"]: g for g in new_groups}

    def interfaces(groups: dict[str, dict[str, Any]]) -> dict[str, tuple[str, bool]]:
        owner = {}
        for group in groups.values():
            if group.get("upstream"):
                owner[group["upstream"]] = (group["name"], True)
            for member in group.get("members", []):
                if not is_pattern(member):
                    owner[member] = (group["name"], False)
        return owner

    def patterns(groups: dict[str, dict[str, Any]]) -> dict[str, str]:
        return {
            member: group["name"]
            for group in groups.values()
            for member in group.get("members", [])
            if is_pattern(member)
        }

    old_patterns, new_patterns = patterns(old), patterns(new)
    plan.remove_patterns = [
        p
        for p, group in old_patterns.items()
        if new_patterns.get(p) != group and topology.pattern_owner(p) == group
    ]
    plan.add_patterns = [
        (p, group)
        for p, group in new_patterns.items()
        if topology.pattern_owner(p) != group or p in plan.remove_patterns
    ]
    old_owner, new_owner = interfaces(old), interfaces(new)
    plan.release_groups = [g for g in old if g not in new and g in topology.groups]
    plan.release_interfaces = [
        i for i in old_owner if i not in new_owner and i in topology.interfaces
    ]
    plan.create_groups = [g for g in new if g not in topology.groups]
    plan.bind_interfaces = [i for i in new_owner if i not in topology.interfaces]
    for name, (group, upstream) in new_owner.items():
        interface = topology.interfaces.get(name)
        current_group = interface.group if interface else None
        is_upstream = current_group is not None and topology.groups[current_group].upstream == name
        pattern_bound = interface is not None and interface.bound_by is not None
        if current_group != group or is_upstream != upstream or pattern_bound:
            plan.memberships.append((name, group, upstream))
    for name, spec in new.items():
        current = topology.groups[name].upstream if name in topology.groups else None
        was = old.get(name, {}).get("upstream")
        if not spec.get("upstream") and was and current == was:
            plan.unset_upstreams.append(name)
    return plan
