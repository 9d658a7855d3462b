"""Follows one interface over rtnetlink: presence, ifindex, MAC, MTU, carrier, addresses.

The worker polls `fileno()` and calls `read()`, which says whether anything about its
interface changed.  Deletion and re-creation (a new ifindex) are both seen, since the
interface is followed by name.  The few rtnetlink messages needed are decoded here by
hand: a full netlink library costs a worker more memory than all the rest of it.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

NETLINK_ROUTE = 0
RTMGRP_LINK = 0x1
RTMGRP_IPV6_IFADDR = 0x100
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU = 1, 3, 4
IFA_ADDRESS = 1
IFF_UP, IFF_LOOPBACK, IFF_LOWER_UP = 0x1, 0x8, 0x10000
AF_INET6 = 10

_NLMSGHDR = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTATTR = struct.Struct("=HH")


def _align(length: int) -> int:
    return (length + 3) & ~3


def _messages(data: bytes) -> Iterator[tuple[int, bytes]]:
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            return
        yield kind, data[offset + _NLMSGHDR.size : offset + length]
        offset += _align(length)


def _attributes(data: bytes, offset: int) -> dict[int, bytes]:
    attributes: dict[int, bytes] = {}
    while offset + _RTATTR.size <= len(data):
        length, kind = _RTATTR.unpack_from(data, offset)
        if length < _RTATTR.size:
            break
        attributes[kind & 0x3FFF] = data[offset + _RTATTR.size : offset + length]
        offset += _align(length)
    return attributes


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


def _link_fields(body: bytes) -> tuple[int, int, dict[int, bytes]]:
    _family, _type, index, flags, _change = _IFINFOMSG.unpack_from(body)
    return index, flags, _attributes(body, _IFINFOMSG.size)


class LinkWatch:
    def __init__(self, ifname: str) -> None:
        self.ifname = ifname
        self._events = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        self._events.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self._events.bind((0, RTMGRP_LINK | RTMGRP_IPV6_IFADDR))
        self._events.setblocking(False)
        self._seq = 0
        self.state = LinkState()
        self.refresh()

    def fileno(self) -> int:
        return self._events.fileno()

    def close(self) -> None:
        self._events.close()

    def _dump(self, kind: int, body: bytes) -> list[tuple[int, bytes]]:
        """A request/dump on a socket of its own, so events and answers never mix."""
        self._seq += 1
        header = _NLMSGHDR.pack(
            _NLMSGHDR.size + len(body), kind, NLM_F_REQUEST | NLM_F_DUMP, self._seq, 0
        )
        replies: list[tuple[int, bytes]] = []
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE) as query:
            query.settimeout(2.0)
            query.sendto(header + body, (0, 0))
            while True:
                for message_kind, message in _messages(query.recv(1 << 16)):
                    if message_kind in (NLMSG_DONE, NLMSG_ERROR):
                        return replies
                    replies.append((message_kind, message))

    def refresh(self) -> LinkState:
        """Ask the kernel for the whole state of the interface."""
        found = None
        for kind, body in self._dump(RTM_GETLINK, _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)):
            if kind != RTM_NEWLINK:
                continue
            index, flags, attributes = _link_fields(body)
            if (
                attributes.get(IFLA_IFNAME, b"").rstrip(b"\0").decode(errors="replace")
                == self.ifname
            ):
                found = (index, flags, attributes)
                break
        if found is None:
            self.state = LinkState()
            return self.state
        index, flags, attributes = found
        mtu = attributes.get(IFLA_MTU)
        self.state = LinkState(
            ifindex=index,
            mac=attributes.get(IFLA_ADDRESS, b""),
            mtu=struct.unpack("=I", mtu)[0] if mtu else 0,
            # Carrier (LOWER_UP) is immediate; RUNNING lags behind it by up to a second.
            up=bool(flags & IFF_UP) and bool(flags & IFF_LOWER_UP),
            loopback=bool(flags & IFF_LOOPBACK),
            addresses=self._addresses(index),
        )
        return self.state

    def _addresses(self, ifindex: int) -> list[bytes]:
        addresses = []
        for kind, body in self._dump(RTM_GETADDR, _IFADDRMSG.pack(AF_INET6, 0, 0, 0, 0)):
            if kind != RTM_NEWADDR:
                continue
            family, _prefix, _flags, _scope, index = _IFADDRMSG.unpack_from(body)
            address = _attributes(body, _IFADDRMSG.size).get(IFA_ADDRESS)
            if family == AF_INET6 and index == ifindex and address and len(address) == 16:
                addresses.append(address)
        return sorted(addresses)

    def read(self) -> bool:
        """Consume pending events; True when our interface's state changed."""
        relevant = False
        while True:
            try:
                data = self._events.recv(1 << 16)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                relevant = True  # events were lost: look again
                continue
            for kind, body in _messages(data):
                if kind in (RTM_NEWLINK, RTM_DELLINK) and len(body) >= _IFINFOMSG.size:
                    index, _flags, attributes = _link_fields(body)
                    name = attributes.get(IFLA_IFNAME, b"").rstrip(b"\0").decode(errors="replace")
                    relevant |= name == self.ifname or index == self.state.ifindex
                elif kind in (RTM_NEWADDR, RTM_DELADDR) and len(body) >= _IFADDRMSG.size:
                    relevant |= _IFADDRMSG.unpack_from(body)[4] == self.state.ifindex
        if not relevant:
            return False
        before = self.state
        after = self.refresh()
        return before != after
