"""Stand-ins for the supervisor's kernel- and disk-facing parts, for unit tests of the rest.

The fast path and the state saver have their own tests against nft and a real disk; here
they only record what they were asked and answer as told.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from portier.config import Config, GroupConfig
from portier.status import OK, Code, Status
from portier.supervisor.commit import Committer
from portier.supervisor.events import EventPublisher
from portier.supervisor.state import Change, ProxyState


class RecordingFastPath:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    async def sync(self, topology: Any, neighbors: Any, now: float) -> None:
        self.calls.append(("sync", now))

    async def maintain(self, topology: Any, neighbors: Any, now: float) -> None:
        self.calls.append(("maintain", now))

    async def set_enabled(self, enabled: bool, topology: Any, neighbors: Any, now: float) -> None:
        self.calls.append(("set_enabled", enabled))

    async def check(self, topology: Any, neighbors: Any, now: float) -> int:
        self.calls.append(("check", now))
        return 0

    def view(self) -> dict[str, Any]:
        return {"enabled": True, "active": True, "reason": "", "neighbors": 0}


class ScriptedSaver:
    """Saves succeed until `error` is set; then they fail with that OS message."""

    def __init__(self) -> None:
        self.error: str | None = None
        self.saves: list[dict[str, Any]] = []

    async def save(self, topology: Any, neighbors: Any, applied_config: dict[str, Any]) -> Status:
        self.saves.append(applied_config)
        if self.error:
            return Status(Code.UNEXPECTED_FAILURE, self.error)
        return OK

    def view(self) -> dict[str, Any]:
        return {"error": self.error, "failing_since": None, "saved_at": None, "failures": 0}


class Broadcasts:
    def __init__(self) -> None:
        self.sent: list[list[Change]] = []

    async def __call__(self, changes: list[Change], exclude: str | None = None) -> None:
        if changes:
            self.sent.append(changes)


def lan_config(tmp_path: Path, **fields: Any) -> Config:
    groups = fields.pop("groups", (GroupConfig("lan", "up0", ("vm1", "vm2")),))
    return Config(
        runtime_dir=tmp_path / "run",
        state_dir=tmp_path / "state",
        groups=groups,
        **fields,
    )


def committer_for(
    state: ProxyState,
    *,
    fastpath: RecordingFastPath | None = None,
    saver: ScriptedSaver | None = None,
    broadcast: Broadcasts | None = None,
    clock: Any = None,
) -> Committer:
    return Committer(
        state,
        broadcast=broadcast or Broadcasts(),
        fastpath=fastpath or RecordingFastPath(),
        saver=saver or ScriptedSaver(),
        events=EventPublisher(),
        applied_config=lambda: {"groups": []},
        **({"clock": clock} if clock else {}),
    )
