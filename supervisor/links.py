"""The host's links, followed over rtnetlink with pyroute2: the supervisor's view.

`LinkFollower` keeps a table of every link in portierd's network namespace (ifindex,
name, up/down, MAC, MTU), from one dump and then the kernel's link notifications (new,
changed, renamed, deleted).  When the kernel drops notifications because the socket's
buffer overflowed (ENOBUFS: hundreds of links created at once, or a stalled loop), the
table is rebuilt from a fresh dump, so nothing missed stays missed.  Notifications are
folded: the table is handed on (`on_change`) only when it changed, and changes that
arrive while the previous hand-off runs are handed on together, so a burst of links is a
few hand-offs, not one per link.

Which process decides what: the supervisor, from this table, decides membership (which
interfaces pattern-bound groups hold, hence which workers run; guests.py).  Each
worker's own LinkWatch stays the authority on its own interface's facts as the worker
uses them (ifindex, MAC, MTU, up/down, addresses), reported in its hello and link
reports.  This module only reads the kernel; it never changes a link.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.rtnl import RTMGRP_LINK

log = logging.getLogger("portier.supervisor")

IFF_UP = 0x1
IFF_LOOPBACK = 0x8
# Room for a burst of a few thousand notifications before the kernel drops any.
RCVBUF_BYTES = 8 << 20


@dataclass(frozen=True, slots=True)
class Link:
    index: int
    name: str
    up: bool
    mac: str
    mtu: int
    loopback: bool
    kind: str = ""  # "veth", "bridge", ... ("" for a physical device)
    peer_elsewhere: bool = False  # its peer (IFLA_LINK) is in another network namespace


def link_from_message(message: Any) -> Link:
    flags = int(message.get("flags", 0))
    info = message.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
    return Link(
        index=int(message["index"]),
        name=str(message.get("ifname") or ""),
        up=bool(flags & IFF_UP),
        mac=str(message.get("address") or ""),
        mtu=int(message.get("mtu") or 0),
        loopback=bool(flags & IFF_LOOPBACK),
        kind=str(kind or ""),
        peer_elsewhere=message.get_attr("IFLA_LINK_NETNSID") is not None,
    )


OnChange = Callable[[dict[int, Link]], Awaitable[None]]


class LinkFollower:
    def __init__(self, on_change: OnChange, *, rcvbuf_bytes: int = RCVBUF_BYTES) -> None:
        self.on_change = on_change
        self.rcvbuf_bytes = rcvbuf_bytes
        self.links: dict[int, Link] = {}
        self.overruns = 0  # ENOBUFS seen (each answered by a dump)
        self.dumps = 0
        self.changed = asyncio.Event()

    def veth_peer_elsewhere(self, ifindex: int) -> bool:
        """A veth whose peer is in another network namespace (the BPF path's shortcut)."""
        link = self.links.get(ifindex)
        return link is not None and link.kind == "veth" and link.peer_elsewhere

    def names(self) -> dict[str, Link]:
        return {link.name: link for link in self.links.values()}

    async def dump(self) -> None:
        """Replace the table with the kernel's, on a socket of its own."""
        links: dict[int, Link] = {}
        async with AsyncIPRoute() as dumper:
            async for message in await dumper.link("dump"):
                link = link_from_message(message)
                links[link.index] = link
        self.dumps += 1
        if links != self.links:
            self.links = links
            self.changed.set()

    def apply(self, messages: list[Any]) -> None:
        for message in messages:
            event = message.get("event")
            if event == "RTM_NEWLINK":
                link = link_from_message(message)
                if self.links.get(link.index) != link:
                    self.links[link.index] = link
                    self.changed.set()
            elif event == "RTM_DELLINK" and self.links.pop(int(message["index"]), None) is not None:
                self.changed.set()

    async def run(self) -> None:
        """Follow the kernel until cancelled (a loop under the loop supervisor)."""
        events = AsyncIPRoute(groups=RTMGRP_LINK, rcvbuf=self.rcvbuf_bytes)
        try:
            await events.bind()
            # Subscribed before the dump: what changes during it arrives afterwards.
            await self.dump()
            async with asyncio.TaskGroup() as tasks:  # one failing ends both
                tasks.create_task(self._follow(events))
                tasks.create_task(self._hand_on())
        finally:
            events.close()

    async def _follow(self, events: AsyncIPRoute) -> None:
        while True:
            try:
                self.apply([message async for message in events.get()])
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self.overruns += 1
                log.warning("link notifications were lost (ENOBUFS); dumping the links again")
                await self.dump()

    async def _hand_on(self) -> None:
        while True:
            await self.changed.wait()
            self.changed.clear()
            await self.on_change(dict(self.links))
