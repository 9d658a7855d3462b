"""A private network namespace of veth pairs for the tc program's tests, with IPv6 off
so that nothing but the test speaks on its links.

setns() moves only the calling thread, so `entered()` is how a test runs the program
(BPF_PROG_TEST_RUN finds devices in the caller's namespace) or attaches it there, and
comes back.  The namespace, and everything in it, goes in `destroy()`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import socket
import subprocess
import time
from collections.abc import Callable, Iterator

CLONE_NEWNET = 0x40000000
ETH_P_ALL = 0x0003
_libc = ctypes.CDLL(None, use_errno=True)


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=10)


class Namespace:
    def __init__(self, tag: str, pairs: list[tuple[str, str]]) -> None:
        self.name = f"ptbpf{os.getpid()}{tag}"
        self.pairs = pairs
        self.created = False
        self.sockets: list[socket.socket] = []

    def create(self) -> None:
        _run("ip", "netns", "add", self.name)
        self.created = True
        sysctls = [f"net.ipv6.conf.{c}.disable_ipv6=1" for c in ("all", "default")]
        _run("ip", "netns", "exec", self.name, "sysctl", "-qw", *sysctls)
        for one, other in self.pairs:
            _run("ip", "-n", self.name, "link", "add", one, "type", "veth", "peer", "name", other)
            for device in (one, other):
                _run("ip", "-n", self.name, "link", "set", device, "up")

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """This thread inside the namespace, and back home after."""
        with open("/proc/self/ns/net") as home, open(f"/run/netns/{self.name}") as there:
            if _libc.setns(there.fileno(), CLONE_NEWNET):
                raise OSError(ctypes.get_errno(), "setns into the test namespace")
            try:
                yield
            finally:
                if _libc.setns(home.fileno(), CLONE_NEWNET):
                    raise OSError(ctypes.get_errno(), "setns back home")

    def ifindex(self, device: str) -> int:
        with self.entered():
            return socket.if_nametoindex(device)

    def packet_socket(self, device: str) -> socket.socket:
        """A non-blocking packet socket bound to `device`: it sees every frame there."""
        with self.entered():
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sockets.append(sock)
        sock.bind((device, 0))
        sock.setblocking(False)
        return sock

    def destroy(self) -> None:
        for sock in self.sockets:
            sock.close()
        if self.created:
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=10)


def drain(sock: socket.socket) -> None:
    with contextlib.suppress(BlockingIOError):
        while True:
            sock.recv(65536)


def frames(sock: socket.socket, wait_s: float, wanted: Callable[[bytes], bool]) -> list[bytes]:
    """The wanted frames seen within `wait_s`; returns as soon as there is one."""
    deadline = time.monotonic() + wait_s
    found: list[bytes] = []
    while not found and (left := deadline - time.monotonic()) > 0:
        if not select.select([sock], [], [], left)[0]:
            break
        with contextlib.suppress(BlockingIOError):
            while True:
                frame = sock.recv(65536)
                if wanted(frame):
                    found.append(frame)
    return found
