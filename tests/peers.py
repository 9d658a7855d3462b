"""Tiny TCP/UDP/ND peers for the lab tests, run with `python peers.py ROLE ...`.

server PORT            accept one TCP connection, print "<bytes> <sha256>" of what came
client ADDR PORT SIZE  send SIZE pseudo-random bytes, print "<bytes> <sha256>"
udprecv PORT COUNT     print the hop limit of each of COUNT datagrams received
udpsend ADDR PORT HOPS send a datagram with that hop limit, once per 0.1 s, 50 times at most
ra IFACE FLAGS         send one Router Advertisement (flags byte in hex) to ff02::1 on IFACE
icmpwatch TYPE SECONDS print one JSON line per ICMPv6 message of TYPE received, for SECONDS
redirect IFACE DST TARGET REDIRECTED SLLA
                       send a Redirect to DST (link-local, on IFACE) with a TLLA option
rawsend IFACE HEX      send one Ethernet frame, given in hex, out of IFACE
rs IFACE MAC           send one Router Solicitation carrying MAC in its SLLA option
framewatch IFACE SECONDS MARKER...
                       print one JSON line per frame received on IFACE that contains one
                       of the MARKERs (hex), until every marker was seen or SECONDS passed
nsflood IFACE SECONDS COUNT
                       send multicast NS for random targets from IFACE's link-local
                       address as fast as it can, COUNT at most, for SECONDS at most
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import random
import socket
import subprocess
import sys
import time
from typing import Any

PEERS = __file__  # run this file in a lab host: [sys.executable, PEERS, ROLE, ...]


def watch_frames(
    lab: Any, namespace: str, seconds: float, *markers: bytes, interface: str = "eth0"
) -> subprocess.Popen:
    """Start `framewatch` in a lab host; returns once it listens.  (For the tests' side.)"""
    watcher = lab.spawn(
        namespace,
        sys.executable,
        PEERS,
        "framewatch",
        interface,
        str(seconds),
        *(m.hex() for m in markers),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert watcher.stdout is not None and watcher.stdout.readline().strip() == "listening"
    return watcher


def seen_markers(watcher: subprocess.Popen) -> set[str]:
    output, _ = watcher.communicate(timeout=60)
    return {json.loads(line)["marker"] for line in output.splitlines()}


def server(port: int) -> None:
    listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("::", port))
    listener.listen(1)
    listener.settimeout(60)
    print("listening", flush=True)
    conn, _ = listener.accept()
    conn.settimeout(60)
    digest = hashlib.sha256()
    total = 0
    while chunk := conn.recv(1 << 16):
        digest.update(chunk)
        total += len(chunk)
    print(total, digest.hexdigest(), flush=True)


def client(address: str, port: int, size: int) -> None:
    data = random.Random(4389).randbytes(size)
    with socket.create_connection((address, port), timeout=60) as conn:
        conn.sendall(data)
    print(size, hashlib.sha256(data).hexdigest(), flush=True)


def udp_receive(port: int, count: int) -> None:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
    sock.bind(("::", port))
    sock.settimeout(30)
    print("listening", flush=True)
    for _ in range(count):
        _data, ancillary, _flags, _addr = sock.recvmsg(2048, socket.CMSG_SPACE(4))
        for level, kind, value in ancillary:
            if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_HOPLIMIT:
                print(int.from_bytes(value[:4], sys.byteorder), flush=True)


def udp_send(address: str, port: int, hops: int) -> None:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, hops)
    for _ in range(50):
        sock.sendto(b"hop limit probe", (address, port))
        time.sleep(0.1)


def router_advertisement(interface: str, flags: int) -> None:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
    # type 134, code 0, checksum (the kernel fills it), hop limit 64, flags, lifetime 0
    message = bytes([134, 0, 0, 0, 64, flags, 0, 0]) + bytes(8)
    sock.sendto(message, ("ff02::1", 0, 0, socket.if_nametoindex(interface)))


def icmp_watch(kind: int, seconds: float) -> None:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
    print("listening", flush=True)
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        sock.settimeout(remaining)
        try:
            data, ancillary, _flags, source = sock.recvmsg(4096, 256)
        except TimeoutError:
            break
        if not data or data[0] != kind:
            continue
        fields = {"source": source[0].split("%")[0], "hex": data.hex()}
        for _level, cmsg, value in ancillary:
            if cmsg == socket.IPV6_PKTINFO:
                fields["destination"] = str(ipaddress.IPv6Address(value[:16]))
            elif cmsg == socket.IPV6_HOPLIMIT:
                fields["hop_limit"] = int.from_bytes(value[:4], sys.byteorder)
        print(json.dumps(fields), flush=True)


def redirect(interface: str, destination: str, target: str, redirected: str, mac: str) -> None:
    """A Redirect (RFC 4861 §4.5) that only a router's link-local address may send."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
    index = socket.if_nametoindex(interface)
    sock.bind(("fe80::1", 0, 0, index))
    tlla = bytes([2, 1]) + bytes.fromhex(mac.replace(":", ""))
    quoted = bytes(48)
    header = bytes([4, 1 + len(quoted) // 8]) + bytes(6) + quoted
    message = (
        bytes([137, 0, 0, 0, 0, 0, 0, 0])
        + ipaddress.IPv6Address(target).packed
        + ipaddress.IPv6Address(redirected).packed
        + tlla
        + header
    )
    sock.sendto(message, (destination, 0, 0, index))


def router_solicitation(interface: str, mac: str) -> None:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
    message = bytes([133, 0, 0, 0, 0, 0, 0, 0, 1, 1]) + bytes.fromhex(mac.replace(":", ""))
    sock.sendto(message, ("ff02::2", 0, 0, socket.if_nametoindex(interface)))


def raw_send(interface: str, frame_hex: str) -> None:
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind((interface, 0))
        sock.send(bytes.fromhex(frame_hex))


def frame_watch(interface: str, seconds: float, markers: list[str]) -> None:
    """Every frame, tagged or not (ETH_P_ALL also sees PACKET_OTHERHOST), with a marker."""
    wanted = {bytes.fromhex(m): m for m in markers}
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003)) as sock:
        sock.bind((interface, 0))
        sock.setsockopt(263, 8, 1)  # PACKET_AUXDATA: the VLAN tag the kernel took off
        print("listening", flush=True)
        seen: set[str] = set()
        deadline = time.monotonic() + seconds
        while len(seen) < len(wanted) and (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                frame, ancillary, _flags, address = sock.recvmsg(65535, 256)
            except TimeoutError:
                break
            for marker, name in wanted.items():
                if marker in frame:
                    seen.add(name)
                    tci = [value.hex() for level, kind, value in ancillary if kind == 8]
                    print(
                        json.dumps({"marker": name, "pkttype": address[2], "aux": tci}),
                        flush=True,
                    )


def ns_flood(interface: str, seconds: float, count: int) -> None:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
    index = socket.if_nametoindex(interface)
    sock.setblocking(False)
    rng = random.Random(6620)
    sent = 0
    deadline = time.monotonic() + seconds
    while sent < count and time.monotonic() < deadline:
        target = bytes.fromhex("20010db8000100000000") + rng.randbytes(6)
        group = f"ff02::1:ff{target[13]:02x}:{target[14]:02x}{target[15]:02x}"
        try:
            sock.sendto(bytes([135, 0, 0, 0, 0, 0, 0, 0]) + target, (group, 0, 0, index))
        except BlockingIOError:
            continue
        sent += 1
    print(sent, flush=True)


if __name__ == "__main__":
    role, *rest = sys.argv[1:]
    if role == "server":
        server(int(rest[0]))
    elif role == "client":
        client(rest[0], int(rest[1]), int(rest[2]))
    elif role == "udprecv":
        udp_receive(int(rest[0]), int(rest[1]))
    elif role == "udpsend":
        udp_send(rest[0], int(rest[1]), int(rest[2]))
    elif role == "ra":
        router_advertisement(rest[0], int(rest[1], 16))
    elif role == "icmpwatch":
        icmp_watch(int(rest[0]), float(rest[1]))
    elif role == "redirect":
        redirect(*rest)
    elif role == "rs":
        router_solicitation(rest[0], rest[1])
    elif role == "rawsend":
        raw_send(rest[0], rest[1])
    elif role == "framewatch":
        frame_watch(rest[0], float(rest[1]), rest[2:])
    elif role == "nsflood":
        ns_flood(rest[0], float(rest[1]), int(rest[2]))
