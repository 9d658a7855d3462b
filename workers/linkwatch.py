"""Follows one interface over rtnetlink: presence, ifindex, MAC, MTU, carrier, addresses.

The worker polls `fileno()` and calls `read()`, which says whether anything about its
interface changed.  Deletion and re-creation (a new ifindex) are both seen, since the
interface is followed by name, and asked for by name (one answer, never a dump of
every interface).  The kernel's answers are trusted only when whole: an address dump the
kernel flags as interrupted (NLM_F_DUMP_INTR: something changed meanwhile) is redone, a
look that fails (a timeout, an error) keeps the previous state and is retried, and an
overrun of the event socket (ENOBUFS: events were lost, as under a storm of interfaces
coming and going) makes it look again.  Every worker of a host hears every link and
address event of its namespace, so the event socket carries a kernel-side filter: only
events of our ifindex come through (all link events while the interface is absent), and
a worker's start no longer wakes hundreds of others.  The address dump asks the kernel
for our interface alone (NETLINK_GET_STRICT_CHK).  The few rtnetlink messages needed are decoded
here by hand: a full netlink library costs a worker more memory than all the rest of it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from portier.workers import packetio

NETLINK_ROUTE = 0
RTMGRP_LINK = 0x1
RTMGRP_IPV6_IFADDR = 0x100
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_DUMP_INTR, NLM_F_DUMP = 0x1, 0x2, 0x10, 0x300
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU = 1, 3, 4
IFA_ADDRESS = 1
IFF_UP, IFF_LOOPBACK, IFF_LOWER_UP = 0x1, 0x8, 0x10000
AF_INET6 = 10

REQUEST_TIMEOUT_S = 2.0
ATTEMPTS = 5  # an interrupted dump is redone this many times before giving up for now
RETRY_S = 0.5
EVENTS_PER_READ = 256  # then the loop's other work; the socket stays readable
SOL_NETLINK = 270
NETLINK_GET_STRICT_CHK = 12
# Where ifinfomsg's and ifaddrmsg's interface index sits in an event, both alike: after
# the 16-byte nlmsghdr and 4 bytes of family, type or prefix fields.
EVENT_INDEX_AT = 20

_NLMSGHDR = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTATTR = struct.Struct("=HH")


def _align(length: int) -> int:
    return (length + 3) & ~3


def _messages_with_flags(data: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    """(type, flags, seq, body) of each netlink message in one datagram."""
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, flags, seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            return
        yield kind, flags, seq, data[offset + _NLMSGHDR.size : offset + length]
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


class DumpInterrupted(Exception):
    """The kernel's state changed during a dump (NLM_F_DUMP_INTR): the dump is unreliable."""


def collect_replies(chunks: Iterator[bytes], seq: int) -> list[tuple[int, bytes]]:
    """The messages answering request `seq`, from the datagrams `chunks` yields, up to
    NLMSG_DONE (a dump) or the one reply (a plain request).

    Raises DumpInterrupted when the kernel flagged the dump inconsistent, OSError for an
    error the kernel answered with (e.g. ENODEV: no such interface).
    """
    replies: list[tuple[int, bytes]] = []
    for data in chunks:
        for kind, flags, message_seq, body in _messages_with_flags(data):
            if message_seq != seq:
                continue  # a stale answer to an earlier request
            if flags & NLM_F_DUMP_INTR:
                raise DumpInterrupted
            if kind == NLMSG_DONE:
                return replies
            if kind == NLMSG_ERROR:
                (error,) = struct.unpack_from("=i", body) if len(body) >= 4 else (-errno.EIO,)
                if error:
                    raise OSError(-error, os.strerror(-error))
                return replies  # an acknowledgement
            replies.append((kind, body))
            if not flags & NLM_F_MULTI:
                return replies
    raise OSError(errno.EIO, "netlink reply ended early")


class LinkWatch:
    def __init__(self, ifname: str) -> None:
        self.ifname = ifname
        self._events = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        self._events.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self._events.bind((0, RTMGRP_LINK | RTMGRP_IPV6_IFADDR))
        self._events.setblocking(False)
        self._seq = 0
        self._filtered: int | None = None  # the ifindex the event filter lets through
        self.state = LinkState()
        # True while the last look failed (kept the previous state): look again at
        # `retry_at` (the worker's loop asks `due`).
        self.pending = False
        self.retry_at = 0.0
        self.counters: dict[str, int] = {}
        self.refresh()

    def fileno(self) -> int:
        return self._events.fileno()

    def close(self) -> None:
        self._events.close()

    def _count(self, key: str) -> None:
        self.counters[key] = self.counters.get(key, 0) + 1

    def _request(self, kind: int, body: bytes, flags: int) -> list[tuple[int, bytes]]:
        """A request on a socket of its own, so events and answers never mix."""
        self._seq += 1
        seq = self._seq
        header = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, NLM_F_REQUEST | flags, seq, 0)
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE) as query:
            query.settimeout(REQUEST_TIMEOUT_S)
            with contextlib.suppress(OSError):  # older kernels: the dump is filtered below
                query.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
            query.sendto(header + body, (0, 0))
            return collect_replies(iter(lambda: query.recv(1 << 16), b""), seq)

    def _look(self) -> LinkState:
        """The interface as the kernel has it now; raises when it could not be asked."""
        name = self.ifname.encode() + b"\0"
        attribute = _RTATTR.pack(_RTATTR.size + len(name), IFLA_IFNAME) + name
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attribute + bytes(-len(name) % 4)
        try:  # asked by name: one answer, never a dump of every interface
            replies = self._request(RTM_GETLINK, body, 0)
        except OSError as exc:
            if exc.errno == errno.ENODEV:
                return LinkState()
            raise
        links = [reply for kind, reply in replies if kind == RTM_NEWLINK]
        if not links:
            return LinkState()
        index, flags, attributes = _link_fields(links[0])
        mtu = attributes.get(IFLA_MTU)
        return LinkState(
            ifindex=index,
            mac=attributes.get(IFLA_ADDRESS, b""),
            mtu=struct.unpack("=I", mtu)[0] if mtu else 0,
            # Carrier (LOWER_UP) is immediate; RUNNING lags behind it by up to a second.
            up=bool(flags & IFF_UP) and bool(flags & IFF_LOWER_UP),
            loopback=bool(flags & IFF_LOOPBACK),
            addresses=self._addresses(index),
        )

    def refresh(self, now: float = 0.0) -> LinkState:
        """Ask the kernel for the whole state of the interface.

        An interrupted dump is redone; when the kernel cannot be asked (a timeout, an
        error, dumps interrupted again and again under a storm of changes) the previous
        state is kept and `pending` says to look again, RETRY_S later: a failed look never
        makes the interface seem gone.
        """
        for _ in range(ATTEMPTS):
            try:
                self.state = self._look()
            except DumpInterrupted:
                self._count("dump_interrupted")
                continue
            except OSError as exc:  # socket.timeout included
                self._count(f"netlink_{errno.errorcode.get(exc.errno or 0, 'timeout').lower()}")
                break
            self.pending = False
            if self._filter_events():
                continue  # an event of the new interface may have met the old filter
            return self.state
        self.pending = True
        self.retry_at = now + RETRY_S
        return self.state

    def _filter_events(self) -> bool:
        """Let through only events of our interface; True when the filter moved from one
        ifindex to another (the interface went, or came back as a new one)."""
        index = self.state.ifindex
        if index == self._filtered:
            return False
        if index:
            wanted = int.from_bytes(struct.pack("=I", index), "big")  # as BPF loads it
            program = [
                (packetio.LDW_ABS, 0, 0, EVENT_INDEX_AT),
                (packetio.JEQ, 0, 1, wanted),
                (packetio.RET, 0, 0, packetio.ACCEPT),
                (packetio.RET, 0, 0, 0),
            ]
        else:  # absent: every link event, to see it come back under its name
            program = [(packetio.RET, 0, 0, packetio.ACCEPT)]
        packetio.attach_filter(self._events, packetio.bpf_program(program))
        moved, self._filtered = self._filtered not in (None, 0), index
        return moved

    def due(self, now: float) -> bool:
        return self.pending and now >= self.retry_at

    def _addresses(self, ifindex: int) -> list[bytes]:
        addresses = []
        body = _IFADDRMSG.pack(AF_INET6, 0, 0, 0, ifindex)
        for kind, reply in self._request(RTM_GETADDR, body, NLM_F_DUMP):
            if kind != RTM_NEWADDR:
                continue
            family, _prefix, _flags, _scope, index = _IFADDRMSG.unpack_from(reply)
            address = _attributes(reply, _IFADDRMSG.size).get(IFA_ADDRESS)
            if family == AF_INET6 and index == ifindex and address and len(address) == 16:
                addresses.append(address)
        return sorted(addresses)

    def read(self, now: float = 0.0) -> bool:
        """Consume pending events (a bounded number); True when our interface's state
        changed.  An overrun (ENOBUFS: events were lost) makes it look again."""
        relevant = False
        for _ in range(EVENTS_PER_READ):
            try:
                data = self._events.recv(1 << 16)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    self._count(f"events_{errno.errorcode.get(exc.errno or 0, 'error').lower()}")
                    break
                self._count("events_overrun")
                relevant = True  # events were lost: look again
                continue
            for kind, _flags, _seq, body in _messages_with_flags(data):
                if kind in (RTM_NEWLINK, RTM_DELLINK) and len(body) >= _IFINFOMSG.size:
                    index, _, attributes = _link_fields(body)
                    name = attributes.get(IFLA_IFNAME, b"").rstrip(b"\0").decode(errors="replace")
                    relevant |= name == self.ifname or index == self.state.ifindex
                elif kind in (RTM_NEWADDR, RTM_DELADDR) and len(body) >= _IFADDRMSG.size:
                    relevant |= _IFADDRMSG.unpack_from(body)[4] == self.state.ifindex
        if not relevant:
            return False
        before = self.state
        after = self.refresh(now)
        return before != after

    def retry(self, now: float) -> bool:
        """Look again after a failed look; True when the state changed."""
        before = self.state
        return self.refresh(now) != before
