"""Follows one interface over rtnetlink: presence, ifindex, MAC, MTU, carrier, addresses.

The worker polls `fileno()` and calls `read()`, which says whether anything about its
interface changed.  Deletion and re-creation (a new ifindex) are both seen, since the
interface is followed by name.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from pyroute2 import IPRoute
from pyroute2.netlink.rtnl import RTMGRP_IPV6_IFADDR, RTMGRP_LINK

IFF_UP = 0x1
IFF_LOOPBACK = 0x8
IFF_RUNNING = 0x40
AF_INET6 = 10


@dataclass(slots=True)
class LinkState:
    ifindex: int = 0  # 0: the interface does not exist
    mac: bytes = b""
    mtu: int = 0
    up: bool = False
    loopback: bool = False
    addresses: list[bytes] = field(default_factory=list)

    def wire(self) -> dict:
        return {
            "ifindex": self.ifindex,
            "mac": self.mac,
            "mtu": self.mtu,
            "up": self.up,
            "addresses": list(self.addresses),
        }


class LinkWatch:
    def __init__(self, ifname: str) -> None:
        self.ifname = ifname
        self._ipr = IPRoute()
        self._ipr.bind(groups=RTMGRP_LINK | RTMGRP_IPV6_IFADDR)
        self.state = LinkState()
        self.refresh()

    def fileno(self) -> int:
        return self._ipr.fileno()

    def close(self) -> None:
        self._ipr.close()

    def refresh(self) -> LinkState:
        """Query the kernel for the whole state of the interface."""
        try:
            links = self._ipr.get_links(ifname=self.ifname)
        except Exception:  # pyroute2 raises NetlinkError (ENODEV) for a missing name
            links = []
        if not links:
            self.state = LinkState()
            return self.state
        link = links[0]
        flags = link["flags"]
        mac_text = link.get_attr("IFLA_ADDRESS") or ""
        ifindex = link["index"]
        self.state = LinkState(
            ifindex=ifindex,
            mac=bytes.fromhex(mac_text.replace(":", "")) if mac_text else b"",
            mtu=link.get_attr("IFLA_MTU") or 0,
            up=bool(flags & IFF_UP) and bool(flags & IFF_RUNNING),
            loopback=bool(flags & IFF_LOOPBACK),
            addresses=self._addresses(ifindex),
        )
        return self.state

    def _addresses(self, ifindex: int) -> list[bytes]:
        try:
            messages = self._ipr.get_addr(family=AF_INET6, index=ifindex)
        except Exception:
            return []
        return sorted(
            ipaddress.IPv6Address(m.get_attr("IFA_ADDRESS")).packed
            for m in messages
            if m.get_attr("IFA_ADDRESS")
        )

    def read(self) -> bool:
        """Consume pending netlink events; True when our interface's state changed."""
        relevant = False
        for message in self._ipr.get():
            event = message.get("event", "")
            if event in ("RTM_NEWLINK", "RTM_DELLINK"):
                name = message.get_attr("IFLA_IFNAME")
                if name == self.ifname or message.get("index") == self.state.ifindex:
                    relevant = True
            elif event in ("RTM_NEWADDR", "RTM_DELADDR") and (
                message.get("index") == self.state.ifindex
            ):
                relevant = True
        if not relevant:
            return False
        before = (
            self.state.ifindex,
            self.state.mac,
            self.state.mtu,
            self.state.up,
            tuple(self.state.addresses),
        )
        after_state = self.refresh()
        after = (
            after_state.ifindex,
            after_state.mac,
            after_state.mtu,
            after_state.up,
            tuple(after_state.addresses),
        )
        return before != after
