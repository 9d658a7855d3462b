"""Configuration application: restore at start, reload at runtime, both as a diff.

The running state is built from a configuration plus runtime changes.  At start it is
the state file (if any) with the configuration's edits since applied on top; without a
state file it is the configuration applied to an empty state.  A reload applies the
difference between the configuration the state was built from (`applied`) and the new
file, and `[fastpath] enabled`.  Every step's Status is checked: a failed step is logged,
the other steps still apply, and the failures are what a reload replies with.  Restore
never ends the daemon over a step that failed or a state file it could not use (that
file is the loader's to move aside); only an unreadable configuration is fatal, and that
is found before anything starts.  This module never talks to workers or sockets except
through the committer and the pool it is handed.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, Protocol

from portier.config import Config, ConfigError, load_config
from portier.groups import Topology
from portier.neighbors import NeighborCache
from portier.status import OK, Code, Status
from portier.supervisor.commit import Committer, with_save_outcome
from portier.supervisor.reload import ReloadPlan, plan_reload
from portier.supervisor.state import Change, ProxyState
from portier.supervisor.workerpool import WorkerPool

log = logging.getLogger("portier.supervisor")

# Settings a reload cannot change in a running daemon.
RESTART_SETTINGS = (
    "fastpath_engine",
    "fastpath_bpf_object",
    "runtime_dir",
    "state_dir",
    "control_group",
    "metrics_listen",
    "neighbor_capacity",
    "neighbor_lifetime_seconds",
    "per_member_limit",
    "claim_probe_ms",
    "last_writer_wins",
    "control_socket",
    "control_tcp",
    "curve_secret_key",
    "curve_authorized_keys",
)


def config_snapshot(config: Config) -> dict[str, Any]:
    """What of the configuration the running state was built from (see reload.py)."""
    return {
        "groups": config.groups_wire(),
        "nested": config.nested,
        "loop_disable_seconds": config.loop_disable_seconds,
    }


class Restored(Protocol):
    config: dict[str, Any]
    neighbors_restored: int
    neighbors_aged_out: int


class FastPathSwitch(Protocol):
    async def set_enabled(
        self, enabled: bool, topology: Topology, neighbors: NeighborCache, now: float
    ) -> None: ...


LoadState = Callable[[Path, Topology, NeighborCache], Restored | None]
Background = Callable[[Coroutine[Any, Any, Any], str], object]


@dataclasses.dataclass
class DiffResult:
    plan: ReloadPlan
    changes: list[Change]
    failures: list[Status]


class ConfigApplier:
    def __init__(
        self,
        state: ProxyState,
        config: Config,
        *,
        config_path: Path | None,
        load_state: LoadState,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.state = state
        self.config = config
        self.config_path = config_path
        self.load_state = load_state
        self.clock = clock
        self.applied: dict[str, Any] = {"groups": []}
        # Wired once the rest of the supervisor exists (restore runs before).
        self.committer: Committer | None = None
        self.pool: WorkerPool | None = None
        self.fastpath: FastPathSwitch | None = None
        self.background: Background | None = None
        self.apply_guests: Callable[[], Awaitable[tuple[list[Change], dict[str, Any]]]] | None = (
            None
        )

    # --- at start ------------------------------------------------------------------------

    def restore(self) -> list[Status]:
        """The state file, then the configuration's edits since; failures are returned."""
        topology, neighbors = self.state.topology, self.state.neighbors
        try:
            restored = self.load_state(self.config.state_dir, topology, neighbors)
        except Exception:  # a bug in reading the file must not become a crash loop
            log.exception(
                "restoring %s failed; starting from the configuration", self.config.state_dir
            )
            self._clear()
            restored = None
        current = config_snapshot(self.config)
        if restored is None:
            return self.apply_diff({"groups": []}, current, fresh=True).failures
        log.info(
            "state restored from %s: %d neighbors back, %d aged out",
            self.config.state_dir,
            restored.neighbors_restored,
            restored.neighbors_aged_out,
        )
        return self.apply_diff(restored.config, current).failures

    def _clear(self) -> None:
        topology = self.state.topology
        self.state.neighbors.flush()
        for name in list(topology.interfaces):
            topology.release(name)
        for group in list(topology.groups):
            topology.release_group(group)

    # --- at runtime ----------------------------------------------------------------------

    async def reload(self) -> tuple[Status, Any]:
        assert self.committer is not None and self.pool is not None
        if self.config_path is None:
            return Status(Code.FAILED_PRECONDITION, "portierd was started without a file"), None
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            log.error("reload rejected: %s", exc)
            return Status(Code.INVALID_ARGUMENT, str(exc)).wrap(
                "Configuration rejected; the running state is unchanged"
            ), None
        result = self.apply_diff(self.applied, config_snapshot(new))
        needs_restart = [
            key for key in RESTART_SETTINGS if getattr(new, key) != getattr(self.config, key)
        ]
        fastpath_changed = new.fastpath_enabled != self.config.fastpath_enabled
        self.config = dataclasses.replace(
            new, **{k: getattr(self.config, k) for k in needs_restart}
        )
        plan = result.plan
        for name in plan.bind_interfaces:
            if name in self.state.topology.interfaces:
                await self.pool.start(name)
        for name in plan.release_interfaces:
            if self.background is not None and name not in self.state.topology.interfaces:
                self.background(self.pool.stop(name), f"stopping the worker for {name}")
        summary = plan.summary()
        if self.apply_guests is not None:
            guest_changes, guests = await self.apply_guests()
            result.changes.extend(guest_changes)
            summary.update(guests)
        if fastpath_changed and self.fastpath is not None:
            await self.fastpath.set_enabled(
                new.fastpath_enabled, self.state.topology, self.state.neighbors, self.clock()
            )
            summary["fastpath"] = "on" if new.fastpath_enabled else "off"
        saved = await self.committer.commit("reload", result.changes, **summary)
        log.info("configuration reloaded from %s: %s", self.config_path, summary or "no change")
        reply = {
            "changes": summary,
            "needs_restart": needs_restart,
            "failed": [failure.text() for failure in result.failures],
        }
        if result.failures:
            first = result.failures[0]
            status = Status(
                first.code,
                f"Reload applied in part; {len(result.failures)} step(s) failed",
                "; ".join(failure.text() for failure in result.failures),
            )
            return status, reply
        return with_save_outcome(OK, saved), reply

    # --- the diff ------------------------------------------------------------------------

    def apply_diff(
        self, previous: dict[str, Any], current: dict[str, Any], *, fresh: bool = False
    ) -> DiffResult:
        """Change the topology from what `previous` configured to what `current` does."""
        topology = self.state.topology
        try:
            plan = plan_reload(topology, previous.get("groups", []), current["groups"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            # The stored record of the old configuration is unusable: apply all of it.
            log.error("the saved configuration record is unusable (%s); applying it whole", exc)
            plan = plan_reload(topology, [], current["groups"])
        changes: list[Change] = []
        failures: list[Status] = []

        def step(status: Status, what: str) -> bool:
            if status.ok:
                return True
            failure = status.wrap(what)
            failures.append(failure)
            log.error("%s: %s", "configuration" if fresh else "configuration change", failure)
            return False

        for group in plan.release_groups:
            changes += self.state.forget_group(group)
            step(topology.release_group(group), f"Failed to release group {group}")
        for name in plan.release_interfaces:
            changes += self.state.forget_interface(name)
            step(topology.release(name), f"Failed to release {name}")
        for group in plan.create_groups:
            step(topology.create_group(group), f"Failed to create group {group}")
        for pattern in plan.remove_patterns:
            step(topology.remove_pattern(pattern), f"Failed to remove pattern {pattern}")
        for pattern, group in plan.add_patterns:
            if topology.pattern_owner(pattern) not in (None, group):
                step(topology.remove_pattern(pattern), f"Failed to move pattern {pattern}")
            if topology.pattern_owner(pattern) is None:
                step(
                    topology.add_pattern(pattern, group),
                    f"Failed to add pattern {pattern} to group {group}",
                )
        for name in plan.bind_interfaces:
            step(topology.bind(name), f"Failed to bind {name}")
        for name, group, upstream in plan.memberships:
            interface = topology.interfaces.get(name)
            if interface is None:
                step(Status(Code.DOES_NOT_EXIST, f"{name} is not bound"), f"Failed to add {name}")
                continue
            interface.bound_by = None  # named now: an exact name beats a pattern
            if interface.group != group:
                if interface.group is not None:
                    changes += self.state.forget_interface(name)
                    step(topology.remove_from_group(name), f"Failed to remove {name}")
                step(
                    topology.add_to_group(name, group, upstream=upstream),
                    f"Failed to add {name} to group {group}",
                )
            elif upstream:
                step(topology.set_upstream(name), f"Failed to make {name} upstream of {group}")
            elif topology.groups[group].upstream == name:
                step(topology.unset_upstream(group), f"Failed to unset the upstream of {group}")
        for group in plan.unset_upstreams:
            step(topology.unset_upstream(group), f"Failed to unset the upstream of {group}")
        for key, attribute in (("nested", "nested"), ("loop_disable_seconds", "loop_disable_s")):
            if previous.get(key) != current[key]:
                setattr(topology, attribute, current[key])
        self.applied = current
        return DiffResult(plan, changes, failures)
