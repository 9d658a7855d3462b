"""The state file: written atomically (temp file, fsync, rename) under the state dir.

It holds what operators changed at run time and what was learned: the topology and the
neighbor cache, with wall-clock stamps so a later start can age what it reads back.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack

from portier.groups import Topology
from portier.neighbors import NeighborCache
from portier.replication import snapshot_to_wire

STATE_FILE = "state.msgpack"
STATE_FORMAT = 1


def write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def save_state(state_dir: Path, topology: Topology, neighbors: NeighborCache) -> Path:
    document: dict[str, Any] = {
        "format": STATE_FORMAT,
        "saved_wall": time.time(),
        "saved_monotonic": time.monotonic(),
        "state": snapshot_to_wire(topology, neighbors),
    }
    path = state_dir / STATE_FILE
    write_atomically(path, msgpack.packb(document, use_bin_type=True))
    return path
