"""A lab of real kernel hosts in network namespaces: router, proxy host, guests.

    router (radvd, 2001:db8:1::1/64) --r0 == up0-- proxy --vmN == eth0-- guestN
    (with `ula`, the router also has fd00:db8:2::1/64 and advertises both prefixes)
    and, nested: proxy --vmM == up0-- inner proxy --vm1 == eth0-- inner guest

Every namespace name starts with a unique prefix, so parallel labs never collide, and
`down()` removes all of them (killing, by PID, only processes inside them) even after a
failed run.  Used by the netns and system tests, `make demo` and the benchmarks; run it
by hand with `python deploy/lab.py up|down PREFIX`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

PREFIX_NET = "2001:db8:1"
ROUTER_ADDRESS = f"{PREFIX_NET}::1"
ROUTER_LL = "fe80::1"
ULA_NET = "fd00:db8:2"
ULA_ROUTER_ADDRESS = f"{ULA_NET}::1"


class LabError(RuntimeError):
    pass


def run(*argv: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise LabError(f"{shlex.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def veth(name: str, namespace: str, peer: str, peer_namespace: str) -> None:
    """A veth pair with one end in each namespace."""
    run(
        "ip",
        "link",
        "add",
        name,
        "netns",
        namespace,
        "type",
        "veth",
        "peer",
        "name",
        peer,
        "netns",
        peer_namespace,
    )


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05):
    """Poll an observable condition until it holds; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise LabError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)


@dataclass
class Guest:
    name: str  # namespace
    port: str  # the proxy-side interface
    group: str
    static_address: str | None = None


@dataclass
class Lab:
    guests: int = 2
    isolated_guests: int = 0  # guests in a second group with no upstream
    nested: bool = False  # a second proxy host, behind the first, with one guest
    prefix: str = field(default_factory=lambda: "pt" + secrets.token_hex(3))
    radvd: bool = True
    ula: bool = False  # a second, unique local prefix on the upstream link
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="portier-lab-")))
    processes: list[subprocess.Popen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.router = f"{self.prefix}-r"
        self.proxy = f"{self.prefix}-p"
        self.guest_list: list[Guest] = [
            Guest(f"{self.prefix}-g{i}", f"vm{i}", "lan") for i in range(1, self.guests + 1)
        ]
        for j in range(1, self.isolated_guests + 1):
            index = self.guests + j
            self.guest_list.append(
                Guest(f"{self.prefix}-g{index}", f"vm{index}", "iso", f"{PREFIX_NET}::{index:x}00")
            )
        self.inner = f"{self.prefix}-q"
        # The outer proxy's port towards the inner proxy, and the guest behind the inner one.
        self.inner_port = f"vm{len(self.guest_list) + 1}"
        self.inner_guest = Guest(f"{self.prefix}-n1", "vm1", "lan")

    # --- building ----------------------------------------------------------------------

    @property
    def namespaces(self) -> list[str]:
        inner = [self.inner, self.inner_guest.name] if self.nested else []
        return [self.router, self.proxy, *(g.name for g in self.guest_list), *inner]

    def ns(self, namespace: str, *argv: str, check: bool = True, timeout: float = 30.0):
        return run("ip", "netns", "exec", namespace, *argv, check=check, timeout=timeout)

    def sysctl(self, namespace: str, key: str, value: str) -> None:
        self.ns(namespace, "sysctl", "-qw", f"{key}={value}")

    def up(self) -> Lab:
        try:
            self._build()
        except BaseException:
            self.down()
            raise
        return self

    def _build(self) -> None:
        for namespace in self.namespaces:
            run("ip", "netns", "add", namespace)
            self.ns(namespace, "ip", "link", "set", "lo", "up")
        # Proxy hosts must not configure themselves from the RAs they proxy.
        for proxy in [self.proxy, self.inner] if self.nested else [self.proxy]:
            self.sysctl(proxy, "net.ipv6.conf.all.forwarding", "0")
            self.sysctl(proxy, "net.ipv6.conf.all.accept_ra", "0")
            self.sysctl(proxy, "net.ipv6.conf.default.accept_ra", "0")
        # Router <-> proxy upstream.
        veth("r0", self.router, "up0", self.proxy)
        for guest in self.guest_list:
            self.add_guest_link(guest)
        if self.nested:
            veth(self.inner_port, self.proxy, "up0", self.inner)
            self.add_guest_link(self.inner_guest, self.inner)
            for namespace, name in (
                (self.proxy, self.inner_port),
                (self.inner, "up0"),
                (self.inner, "vm1"),
                (self.inner_guest.name, "eth0"),
            ):
                self.ns(namespace, "ip", "link", "set", name, "up")
        self.sysctl(self.router, "net.ipv6.conf.all.forwarding", "1")
        self.ns(
            self.router, "ip", "-6", "addr", "add", f"{ROUTER_ADDRESS}/64", "dev", "r0", "nodad"
        )
        self.ns(self.router, "ip", "-6", "addr", "add", f"{ROUTER_LL}/64", "dev", "r0", "nodad")
        if self.ula:
            self.ns(
                self.router,
                *("ip", "-6", "addr", "add", f"{ULA_ROUTER_ADDRESS}/64", "dev", "r0", "nodad"),
            )
        self.ns(self.router, "ip", "link", "set", "r0", "up")
        self.ns(self.proxy, "ip", "link", "set", "up0", "up")
        for guest in self.guest_list:
            self.ns(self.proxy, "ip", "link", "set", guest.port, "up")
            self.ns(guest.name, "ip", "link", "set", "eth0", "up")
        if self.radvd:
            self.start_radvd()

    def add_guest_link(self, guest: Guest, proxy: str | None = None) -> None:
        veth("eth0", guest.name, guest.port, proxy or self.proxy)
        self.sysctl(guest.name, "net.ipv6.conf.eth0.accept_ra", "1")
        self.sysctl(guest.name, "net.ipv6.conf.eth0.autoconf", "1")
        if guest.static_address:
            self.ns(
                guest.name,
                "ip",
                "-6",
                "addr",
                "add",
                f"{guest.static_address}/64",
                "dev",
                "eth0",
                "nodad",
            )

    def recreate_guest_link(self, guest: Guest) -> None:
        """Delete the guest's veth pair and make a new one (new ifindexes)."""
        self.ns(self.proxy, "ip", "link", "del", guest.port)
        self.add_guest_link(guest)
        self.ns(self.proxy, "ip", "link", "set", guest.port, "up")
        self.ns(guest.name, "ip", "link", "set", "eth0", "up")

    def prefixes(self) -> list[str]:
        return [PREFIX_NET, *([ULA_NET] if self.ula else [])]

    def _write_radvd_config(self, withdrawn: tuple[str, ...] = ()) -> Path:
        lines = [
            "interface r0 {",
            "  AdvSendAdvert on;",
            "  MinRtrAdvInterval 3;",
            "  MaxRtrAdvInterval 10;",
        ]
        for net in self.prefixes():
            # A valid lifetime of 0 is how a router withdraws a prefix (RFC 4861 6.3.4).
            lifetimes = " AdvValidLifetime 0; AdvPreferredLifetime 0;" if net in withdrawn else ""
            lines.append(f"  prefix {net}::/64 {{ AdvOnLink on; AdvAutonomous on;{lifetimes} }};")
        config = self.workdir / "radvd.conf"
        config.write_text("\n".join([*lines, "};", ""]))
        return config

    def start_radvd(self) -> None:
        config = self._write_radvd_config()
        self.radvd_process = self.spawn(
            self.router,
            "radvd",
            "-n",
            "-C",
            str(config),
            "-p",
            str(self.workdir / "radvd.pid"),
            "-m",
            "logfile",
            "-l",
            str(self.workdir / "radvd.log"),
        )

    def withdraw_prefix(self, net: str) -> None:
        """Have the router advertise `net` with lifetime 0 from now on (radvd re-reads on HUP)."""
        self._write_radvd_config(withdrawn=(net,))
        self.radvd_process.send_signal(signal.SIGHUP)

    def spawn(self, namespace: str, *argv: str, **popen: object) -> subprocess.Popen:
        """Start a process inside a namespace; `ip netns exec` execs it, so the PID is its own."""
        process = subprocess.Popen(["ip", "netns", "exec", namespace, *argv], **popen)  # type: ignore[call-overload]
        self.processes.append(process)
        return process

    # --- observing -----------------------------------------------------------------------

    def usable_addresses(self, namespace: str, interface: str, scope: str) -> list[str]:
        """Addresses of a scope that DAD has finished with (not tentative, not failed)."""
        out = self.ns(
            namespace,
            "ip",
            "-6",
            "-o",
            "addr",
            "show",
            "dev",
            interface,
            "scope",
            scope,
            check=False,
        ).stdout
        return [
            line.split()[3].split("/")[0]
            for line in out.splitlines()
            if "tentative" not in line and "dadfailed" not in line
        ]

    def global_address(self, guest: Guest, net: str = PREFIX_NET) -> str | None:
        addresses = self.usable_addresses(guest.name, "eth0", "global")
        return next((a for a in addresses if a.startswith(net + ":")), None)

    def link_local(self, namespace: str, interface: str = "eth0") -> str | None:
        return next(iter(self.usable_addresses(namespace, interface, "link")), None)

    def wait_link_local(
        self, namespace: str, interface: str = "eth0", timeout: float = 10.0
    ) -> str:
        """The host's link-local address once DAD is done (it can send ND from it)."""
        return wait_for(
            lambda: self.link_local(namespace, interface),
            timeout,
            f"a usable link-local address on {namespace}",
        )

    def wait_slaac(self, guest: Guest, timeout: float = 20.0, net: str = PREFIX_NET) -> str:
        return wait_for(
            lambda: self.global_address(guest, net),
            timeout,
            f"a SLAAC address in {net}::/64 on {guest.name}",
        )

    def ping(
        self,
        namespace: str,
        address: str,
        *,
        count: int = 1,
        timeout_s: int = 2,
        extra: tuple[str, ...] = (),
    ) -> subprocess.CompletedProcess[str]:
        return self.ns(
            namespace,
            "ping",
            "-6",
            "-n",
            "-c",
            str(count),
            "-W",
            str(timeout_s),
            *extra,
            address,
            check=False,
            timeout=count * timeout_s + 10,
        )

    def wait_ping(self, namespace: str, address: str, timeout: float = 20.0) -> None:
        wait_for(
            lambda: self.ping(namespace, address).returncode == 0,
            timeout,
            f"{namespace} to reach {address}",
            interval=0.2,
        )

    # --- tearing down ----------------------------------------------------------------------

    def down(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        for namespace in self.namespaces:
            self._kill_namespace_processes(namespace)
            run("ip", "netns", "del", namespace, check=False)
        subprocess.run(["rm", "-rf", str(self.workdir)], check=False)

    @staticmethod
    def _kill_namespace_processes(namespace: str) -> None:
        """Backstop: anything still running inside one of our namespaces was started by us."""
        pids = run("ip", "netns", "pids", namespace, check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)

    @contextlib.contextmanager
    def running(self) -> Iterator[Lab]:
        self.up()
        try:
            yield self
        finally:
            self.down()


def leftover_namespaces(prefix: str) -> list[str]:
    out = run("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix)]


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] not in ("up", "down"):
        print("usage: lab.py up [PREFIX] | down PREFIX", file=sys.stderr)
        return 2
    if argv[1] == "up":
        lab = Lab(prefix=argv[2]) if len(argv) > 2 else Lab()
        lab.up()
        print(lab.prefix)
        return 0
    for namespace in leftover_namespaces(argv[2]):
        Lab._kill_namespace_processes(namespace)
        run("ip", "netns", "del", namespace, check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
