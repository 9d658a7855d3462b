"""The event stream: a PUB socket that watchers (`portierctl watch`) subscribe to.

Each event is two frames: the topic (state, neighbor, worker, loop, claim) and a msgpack map
with the schema version, the topic as `kind`, a wall-clock `time` and the event's
fields.  A slow watcher loses events (PUB drops at its high-water mark); it never slows
the daemon.  Until the socket is bound (during restore) events go nowhere.
"""

from __future__ import annotations

import time
from typing import Any

import zmq

from portier import schema

TOPICS = ("state", "neighbor", "worker", "loop", "claim")


class EventPublisher:
    def __init__(self, socket: zmq.Socket | None = None) -> None:
        self.socket = socket

    def publish(self, kind: str, **fields: Any) -> None:
        if self.socket is None:
            return
        payload = schema.encode({"kind": kind, "time": time.time(), **fields})
        try:
            self.socket.send_multipart([kind.encode(), payload], zmq.NOBLOCK)
        except zmq.ZMQError:
            return
