"""StateSaver on a real file system that fills up or turns read-only (root: it mounts).

Each test mounts a small tmpfs of its own on a folder it created, and unmounts it
whatever happens.  A failed save is loud (the OS's message, since when, how often) and
never raises; the state stays in memory, and the first save that works again writes all
of it.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import subprocess
from pathlib import Path

import pytest

from portier.groups import Topology
from portier.neighbors import NeighborCache
from portier.supervisor.persistence import STATE_FILE, StateSaver, load_state

CONFIG = {"groups": [], "nested": False, "loop_disable_seconds": 3600}


@pytest.fixture
def small_fs(tmp_path):
    mountpoint = tmp_path / "state"
    mountpoint.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(mountpoint)],
        check=True,
    )
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def fill(directory: Path) -> Path:
    """Write until the file system is full; the filler file, to free the space again."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for _ in range(10_000):  # far more than 64 KiB: the loop ends on ENOSPC
            os.write(fd, b"\0" * 512)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    else:
        raise AssertionError("the small file system never filled up")
    finally:
        os.close(fd)
    return filler


def restored_groups(state_dir: Path) -> list[str]:
    topology = Topology()
    assert load_state(state_dir, topology, NeighborCache()) is not None
    return sorted(topology.groups)


def test_a_full_disk_is_reported_and_the_next_save_catches_up(small_fs, caplog):
    saver = StateSaver(small_fs)
    topology, neighbors = Topology(), NeighborCache()
    topology.create_group("before")

    async def scenario() -> None:
        assert (await saver.save(topology, neighbors, CONFIG)).ok
        saved_before = saver.saved_at
        filler = fill(small_fs)
        topology.create_group("during1")
        status = await saver.save(topology, neighbors, CONFIG)
        assert not status.ok and status.text() == "No space left on device"
        first = saver.view()
        assert first["error"] == "No space left on device" and first["failures"] == 1
        assert first["failing_since"] is not None and first["saved_at"] == saved_before
        topology.create_group("during2")
        assert not (await saver.save(topology, neighbors, CONFIG)).ok
        second = saver.view()
        assert second["failures"] == 2 and second["failing_since"] == first["failing_since"]
        # What is on disk is still the last good state, whole; no temp file is left.
        assert restored_groups(small_fs) == ["before"]
        assert sorted(p.name for p in small_fs.iterdir()) == ["filler", STATE_FILE]
        filler.unlink()
        topology.create_group("after")
        assert (await saver.save(topology, neighbors, CONFIG)).ok
        after = saver.view()
        assert after["error"] is None and after["failing_since"] is None
        assert after["failures"] == 2 and after["saved_at"] > saved_before

    with caplog.at_level(logging.INFO, logger="portier.supervisor"):
        asyncio.run(scenario())
    assert restored_groups(small_fs) == ["after", "before", "during1", "during2"]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "No space left on device" in errors[0]  # once, not per save
    assert any(
        "state saved again" in r.getMessage() and "after 2 failed" in r.getMessage()
        for r in caplog.records
    )


def test_a_read_only_state_dir_is_reported_and_recovers(small_fs):
    saver = StateSaver(small_fs)
    topology, neighbors = Topology(), NeighborCache()

    async def scenario() -> None:
        assert (await saver.save(topology, neighbors, CONFIG)).ok
        subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
        try:
            topology.create_group("meanwhile")
            status = await saver.save(topology, neighbors, CONFIG)
            assert not status.ok and status.text() == "Read-only file system"
            assert saver.view()["error"] == "Read-only file system"
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(small_fs)], check=True)
        assert (await saver.save(topology, neighbors, CONFIG)).ok
        assert saver.view()["error"] is None

    asyncio.run(scenario())
    assert restored_groups(small_fs) == ["meanwhile"]


def test_a_read_only_state_dir_with_a_bad_file_still_starts(small_fs):
    (small_fs / STATE_FILE).write_bytes(b"\x93garbage")
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    try:
        topology = Topology()
        assert load_state(small_fs, topology, NeighborCache()) is None
        assert topology.groups == {}
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_fs)], check=True)
