"""Scale benchmark: hundreds of guests on one proxy, workers by exec and from the zygote.

Run as root: .venv/bin/python bench/scale_bench.py [--sizes 16,128,256,512] [--exec-up-to 128]
For each N it builds a lab of N guests on SLAAC in one group (deploy/lab.py), starts the
real portierd, and prints: the time to READY=1 and until every guest had its address and
answered the router's first ping ("ready"; one RS from the first guest after READY=1
brings the router's RA at once instead of at its next period), the USS/PSS of each
worker, of the zygote, of the supervisor and of all processes in the proxy's namespace,
the CPU all of them used over 10 idle seconds and their wake-ups (context switches) per
second, `portierctl status` latency through the control socket, and the time from a
kill -9 of a guest's worker until that guest's ND works again (an NS for the router
answered).  Runs with workers started by exec (the way before the zygote) for N up to
--exec-up-to, in the same run.  Then, apart from the lab, both kernel fast paths with
16,000 neighbors: a full rebuild, and one new neighbor until its element is in the
kernel (`--sizes ""` prints only these).  Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import fcntl
import ipaddress
import json
import os
import queue
import secrets
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "deploy"))

from appliance_bench import memory_kib  # noqa: E402
from lab import PREFIX_NET, ROUTER_ADDRESS, Lab, run  # noqa: E402
from labdaemon import Daemon  # noqa: E402

from portier.control import ControlClient  # noqa: E402

CLONE_NEWNET = 0x40000000
SIOCGIFHWADDR = 0x8927
ICMP6_FILTER = 1
_libc = ctypes.CDLL(None, use_errno=True)
PREFIX_HEX = ipaddress.IPv6Address(PREFIX_NET + "::").packed[:6].hex()


def enter(namespace: str) -> None:
    """Move the calling thread (only) into a network namespace."""
    fd = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {namespace}")
    finally:
        os.close(fd)


def global_address() -> str | None:
    """A usable address of the lab's prefix in this thread's namespace."""
    for line in Path("/proc/thread-self/net/if_inet6").read_text().splitlines():
        address, _ifindex, _plen, scope, flags, name = line.split()
        usable = int(flags, 16) & 0x48 == 0  # neither tentative nor failed DAD
        if name == "eth0" and scope == "00" and address.startswith(PREFIX_HEX) and usable:
            return str(ipaddress.IPv6Address(bytes.fromhex(address)))
    return None


def icmp_socket(accept_type: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    blocked = [0xFFFFFFFF] * 8
    blocked[accept_type >> 5] &= ~(1 << (accept_type & 31))
    sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, struct.pack("8I", *blocked))
    return sock


def own_mac(sock: socket.socket, interface: str = "eth0") -> bytes:
    request = struct.pack("256s", interface.encode())
    return fcntl.ioctl(sock.fileno(), SIOCGIFHWADDR, request)[18:24]


def multicast_out(sock: socket.socket, interface: str = "eth0") -> None:
    index = socket.if_nametoindex(interface)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)


class RouterPinger:
    """One raw socket in the router's namespace; guests' threads wait for their reply."""

    def __init__(self, router_ns: str) -> None:
        result: list[socket.socket] = []
        thread = threading.Thread(
            target=lambda: (enter(router_ns), result.append(icmp_socket(129)))
        )
        thread.start()
        thread.join()
        self.sock = result[0]
        self.sock.settimeout(0.5)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self.waiting: dict[str, threading.Event] = {}
        self.lock = threading.Lock()
        self.stopping = False
        self.receiver = threading.Thread(target=self._receive, daemon=True)
        self.receiver.start()

    def _receive(self) -> None:
        while not self.stopping:
            try:
                _, source = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            with self.lock:
                event = self.waiting.get(source[0])
            if event is not None:
                event.set()

    def ping(self, address: str, timeout_s: float) -> bool:
        event = threading.Event()
        with self.lock:
            self.waiting[address] = event
        try:
            self.sock.sendto(struct.pack("!BBHHH", 128, 0, 0, 0x5CA1, 1) + b"scale", (address, 0))
        except OSError:
            # The shared socket's send buffer is full of echoes waiting for ND (the
            # timeout applies to sendto too): this try failed, the guest's loop tries again.
            answered = False
            time.sleep(0.05)
        else:
            answered = event.wait(timeout_s)
        with self.lock:
            self.waiting.pop(address, None)
        return answered

    def close(self) -> None:
        self.stopping = True
        self.receiver.join()
        self.sock.close()


def solicit_router(guest_ns: str, deadline: float) -> None:
    """One RS from the guest (once its link-local address is usable), in this thread."""
    enter(guest_ns)
    sock = icmp_socket(134)
    multicast_out(sock)
    rs = struct.pack("!BBHI", 133, 0, 0, 0) + bytes([1, 1]) + own_mac(sock)
    while time.monotonic() < deadline:
        try:
            sock.sendto(rs, ("ff02::2", 0, 0, 0))
            break
        except OSError:  # the link-local address is still tentative (DAD)
            time.sleep(0.05)
    sock.close()


def wait_ready(
    lab: Lab, pinger: RouterPinger, started: float, timeout_s: float
) -> tuple[list[float], list[float]]:
    """Per guest, seconds from `started` until it had its address (the first list) and
    until it answered a ping (the second).

    One thread sweeps the guests' namespaces for their addresses and a few ping them: a
    thread per guest (512 of them polling) took a core and the interpreter lock from
    the proxy it measured.
    """
    done: dict[str, float] = {}
    addressed: dict[str, float] = {}
    deadline = time.monotonic() + timeout_s
    to_ping: queue.Queue[tuple[str, str]] = queue.Queue()
    names = [g.name for g in lab.guest_list]

    def sweep() -> None:
        solicit_router(names[0], deadline)
        waiting = list(names)
        while waiting and time.monotonic() < deadline:
            for name in list(waiting):
                enter(name)
                address = global_address()
                if address is not None:
                    addressed[name] = time.monotonic() - started
                    to_ping.put((name, address))
                    waiting.remove(name)
            time.sleep(0.05)

    def ping() -> None:
        while len(done) < len(names) and time.monotonic() < deadline:
            try:
                name, address = to_ping.get(timeout=0.2)
            except queue.Empty:
                continue
            if pinger.ping(address, 1.0):
                done[name] = time.monotonic() - started
            else:
                lost.add(name)
                to_ping.put((name, address))  # again, until the deadline

    lost: set[str] = set()  # guests whose first ping went unanswered
    threads = [threading.Thread(target=sweep)] + [threading.Thread(target=ping) for _ in range(64)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    missing = len(lab.guest_list) - len(done)
    if missing:
        print(f"  !! {missing} guests not ready within {timeout_s:.0f} s")
    print(f"  first pings lost: {len(lost)} of {len(names)}", flush=True)
    return sorted(addressed.values()), sorted(done.values())


def proxy_pids(lab: Lab) -> list[int]:
    out = run("ip", "netns", "pids", lab.proxy).stdout.split()
    return [int(pid) for pid in out]


def cpu_and_switches(pid: int) -> tuple[float, int]:
    """(CPU seconds, context switches of all threads) so far."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    seconds = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    switches = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.endswith("ctxt_switches:") or "ctxt_switches:" in line:
                switches += int(line.split()[1])
    return seconds, switches


def idle_cost(pids: list[int], seconds: float) -> tuple[dict[int, float], dict[int, float]]:
    """Per process, (CPU % of one core, wake-ups per second) over `seconds` idle."""
    before = {pid: cpu_and_switches(pid) for pid in pids}
    time.sleep(seconds)
    after = {pid: cpu_and_switches(pid) for pid in pids if Path(f"/proc/{pid}").exists()}
    cpu = {p: (after[p][0] - before[p][0]) / seconds * 100 for p in after}
    wakeups = {p: (after[p][1] - before[p][1]) / seconds for p in after}
    return cpu, wakeups


def control_latency(daemon: Daemon, count: int) -> list[float]:
    samples = []
    with ControlClient(daemon.control_socket, timeout_s=10) as client:
        client.call("status")
        for _ in range(count):
            start = time.perf_counter()
            client.call("status")
            samples.append(time.perf_counter() - start)
    return samples


def nd_restart_times(lab: Lab, daemon: Daemon, rounds: int, unicast: bool) -> list[float]:
    """Seconds from kill -9 of a guest's worker until that guest's NS for the router is
    answered again; one guest per round, so that each is a worker's first restart.

    A multicast NS is answered by the kernel's responder (BPF engine) while the worker
    is away, so it shows the guest's outage; a unicast NS, which only the workers relay
    (the guest's and the upstream's), shows the restarted worker's own time.  For that
    one the guest holds the router's MAC as a permanent neighbor meanwhile, or its own
    kernel would resolve the router by a multicast NS, which the kernel answers.
    """
    results: list[float] = []
    target = ipaddress.IPv6Address(ROUTER_ADDRESS).packed
    solicited = "ff02::1:ff" + target.hex()[-6:-4] + ":" + target.hex()[-4:]
    destination = ROUTER_ADDRESS if unicast else solicited

    def probe(guest_ns: str, port: str) -> None:
        if unicast:
            port_mac = json.loads(run("ip", "-n", lab.proxy, "-j", "link", "show", port).stdout)
            neighbor = ("neigh", "replace", ROUTER_ADDRESS, "dev", "eth0")
            run(
                "ip",
                "-n",
                guest_ns,
                *neighbor,
                "lladdr",
                port_mac[0]["address"],
                "nud",
                "permanent",
            )
        enter(guest_ns)
        sock = icmp_socket(136)
        multicast_out(sock)
        sock.setblocking(False)
        ns = struct.pack("!BBHI", 135, 0, 0, 0) + target + bytes([1, 1]) + own_mac(sock)
        pid = next(w["pid"] for w in daemon.call("workers") if w["interface"] == port)
        while True:  # nothing old left in the socket
            try:
                sock.recv(2048)
            except BlockingIOError:
                break
        killed = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        answered = float("nan")
        while time.perf_counter() - killed < 20:
            sock.sendto(ns, (destination, 0, 0, 0))
            time.sleep(0.002)
            try:
                if any(sock.recv(2048)[8:24] == target for _ in range(64)):
                    answered = time.perf_counter() - killed
                    break
            except BlockingIOError:
                pass
        results.append(answered)
        sock.close()
        if unicast:
            run("ip", "-n", guest_ns, "neigh", "del", ROUTER_ADDRESS, "dev", "eth0")

    guests = lab.guest_list[rounds:] if unicast else lab.guest_list
    for guest in guests[:rounds]:
        thread = threading.Thread(target=probe, args=(guest.name, guest.port))
        thread.start()
        thread.join()
        time.sleep(0.5)
    return results


def reset_guests(lab: Lab) -> None:
    """Forget the guests' SLAAC addresses and neighbors so the next daemon starts cold."""
    for guest in lab.guest_list:
        run("ip", "-n", guest.name, "-6", "addr", "flush", "dev", "eth0", "scope", "global")
        run("ip", "-n", guest.name, "-6", "neigh", "flush", "dev", "eth0")


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(lab: Lab, zygote: bool, workdir: Path, settle_s: float) -> dict[str, float]:
    pinger = RouterPinger(lab.router)
    daemon = Daemon(lab, workdir=workdir, worker_zygote=zygote)
    n = len(lab.guest_list)
    started = time.monotonic()
    try:
        daemon.start(timeout=300)
        ready_1 = time.monotonic() - started
        addressed, times = wait_ready(lab, pinger, started, timeout_s=300)
        ready = max(times) if len(times) == n else float("nan")
        # Let the first reports settle and the workers' heartbeats back off to their idle
        # pace (1 + 2 + 4 + 8 + 16 s): the idle figures are of a proxy left alone.
        time.sleep(settle_s)
        pids = proxy_pids(lab)
        assert daemon.process is not None
        workers = {w["pid"] for w in daemon.call("workers") if w["pid"]}
        zygote_pid = (daemon.call("status").get("zygote") or {}).get("pid")
        memory = {pid: memory_kib(pid) for pid in pids}
        worker_uss = [memory[p][0] / 1024 for p in workers if p in memory]
        worker_pss = [memory[p][1] / 1024 for p in workers if p in memory]
        cpu_of, wakeups_of = idle_cost(pids, 10.0)
        cpu = sum(cpu_of.values())
        supervisor_cpu = cpu_of.get(daemon.process.pid, 0.0)
        wakeups = [wakeups_of[p] for p in workers if p in wakeups_of]
        worker_wakeups = statistics.median(wakeups) if wakeups else float("nan")
        latency = control_latency(daemon, 300)
        outage = nd_restart_times(lab, daemon, 5, unicast=False)
        restart = nd_restart_times(lab, daemon, 5, unicast=True)
        figures = {
            "N": n,
            "ready_1_s": ready_1,
            "ready_s": ready,
            "addressed_s": max(addressed) if addressed else float("nan"),
            "worker_uss": statistics.median(worker_uss),
            "worker_pss": statistics.median(worker_pss),
            "total_uss": sum(m[0] for m in memory.values()) / 1024,
            "total_pss": sum(m[1] for m in memory.values()) / 1024,
            "supervisor_uss": memory[daemon.process.pid][0] / 1024,
            "zygote_uss": memory[zygote_pid][0] / 1024 if zygote_pid in memory else 0.0,
            "idle_cpu": cpu,
            "idle_cpu_supervisor": supervisor_cpu,
            "wakeups": worker_wakeups,
            "wakeups_max": max(wakeups) if wakeups else float("nan"),
            "wakeups_supervisor": wakeups_of.get(daemon.process.pid, float("nan")),
            "status_p50_ms": pct(latency, 0.5) * 1000,
            "status_p99_ms": pct(latency, 0.99) * 1000,
            "restart_p50_ms": statistics.median(restart) * 1000,
            "restart_max_ms": max(restart) * 1000,
            "outage_p50_ms": statistics.median(outage) * 1000,
            "processes": len(pids),
        }
        print("  " + json.dumps({k: round(v, 2) for k, v in figures.items()}), flush=True)
        return figures
    finally:
        pinger.close()
        daemon.stop(timeout=30)


async def fastpath_figures(neighbors_count: int, rounds: int) -> None:
    from portier.neighbors import Neighbor
    from portier.supervisor.fastpath import FAMILY, TABLE, FastPath

    sys.path.insert(0, str(ROOT / "bench"))
    from fastpath_check_bench import build_state  # the same two-member state

    namespace = "ptscale" + secrets.token_hex(3)
    run("ip", "netns", "add", namespace)
    try:
        for a, b in (("m1", "p1"), ("m2", "p2")):
            run("ip", "-n", namespace, "link", "add", a, "type", "veth", "peer", "name", b)
            run("ip", "-n", namespace, "link", "set", a, "up")
            run("ip", "-n", namespace, "link", "set", b, "up")
        with tempfile.TemporaryDirectory() as workdir:
            wrapper = Path(workdir) / "nft"
            wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {namespace} /usr/sbin/nft "$@"\n')
            wrapper.chmod(0o755)
            topology, neighbors = build_state(namespace, neighbors_count)
            fast = FastPath(nft=str(wrapper), kernel_cleanup=False)
            start = time.perf_counter()
            await fast.start(topology, neighbors, 0.0)
            rebuild = time.perf_counter() - start
            assert fast.active, fast.view()
            added = []
            base = bytes.fromhex("20010db8000200000000000000000000")
            for n in range(rounds):
                address = base[:12] + n.to_bytes(4, "big")
                neighbors.put(Neighbor("lan", address, "m2", b"\x02\x01" + n.to_bytes(4, "big")))
                start = time.perf_counter()
                await fast.sync(topology, neighbors, 1.0)
                added.append(time.perf_counter() - start)
            listing = subprocess.run(
                [str(wrapper), "-j", "list", "table", FAMILY, TABLE], capture_output=True, text=True
            ).stdout
            assert (
                ipaddress.IPv6Address(base[:12] + (rounds - 1).to_bytes(4, "big")).compressed
                in listing
            )
            await fast.remove()
    finally:
        run("ip", "netns", "del", namespace, check=False)
    print(
        f"fast path (nftables), {neighbors_count} neighbors: full rebuild {rebuild * 1000:.0f} ms;"
        f" one new neighbor to the kernel p50 {pct(added, 0.5) * 1000:.1f} ms,"
        f" p99 {pct(added, 0.99) * 1000:.1f} ms ({rounds} in turn)"
    )


def bpf_figures(neighbors_count: int, rounds: int) -> None:
    """The BPF engine on the same state: start (load, attach, fill), then new neighbors
    programmed from the cache's journal, and, as the baseline in the same run, the same
    with a whole-state compare each time (what every sync did before the journal)."""
    from portier.neighbors import Neighbor
    from portier.supervisor.bpfpath import BpfPath

    sys.path.insert(0, str(ROOT / "bench"))
    from fastpath_check_bench import build_state

    namespace = "ptscale" + secrets.token_hex(3)
    run("ip", "netns", "add", namespace)
    lines: list[str] = []

    def measure_in_namespace() -> None:
        enter(namespace)  # this thread only: tc and the maps act there
        topology, neighbors = build_state(namespace, neighbors_count + 2 * rounds)
        path = BpfPath()
        start = time.perf_counter()
        path._start(topology, neighbors, 0.0)
        started = time.perf_counter() - start
        base = bytes.fromhex("20010db8000200000000000000000000")
        figures = {}
        for label, full in (("journal", False), ("whole-state compare", True)):
            added = []
            for n in range(rounds):
                index = n + (rounds if full else 0)
                address = base[:12] + index.to_bytes(4, "big")
                mac = b"\x02\x01" + index.to_bytes(4, "big")
                neighbors.put(Neighbor("lan", address, "m2", mac))
                begin = time.perf_counter()
                path.sync(topology, neighbors, 1.0, full=full)
                added.append(time.perf_counter() - begin)
            figures[label] = added
        programmed = path.view()["neighbors"]
        path.remove()
        lines.append(
            f"fast path (bpf), {neighbors_count} neighbors: start {started * 1000:.0f} ms;"
            + ";".join(
                f" one new neighbor ({label}) p50 {pct(added, 0.5) * 1000:.2f} ms,"
                f" p99 {pct(added, 0.99) * 1000:.2f} ms"
                for label, added in figures.items()
            )
            + f" ({rounds} each; {programmed} routes programmed)"
        )

    try:
        for a, b in (("m1", "p1"), ("m2", "p2")):
            run("ip", "-n", namespace, "link", "add", a, "type", "veth", "peer", "name", b)
            run("ip", "-n", namespace, "link", "set", a, "up")
            run("ip", "-n", namespace, "link", "set", b, "up")
        worker = threading.Thread(target=measure_in_namespace)
        worker.start()
        worker.join()
    finally:
        run("ip", "netns", "del", namespace, check=False)
    print("\n".join(lines) or "fast path (bpf): failed (see the error above)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="16,128,256,512")
    parser.add_argument("--exec-up-to", type=int, default=128)
    parser.add_argument("--fastpath-neighbors", type=int, default=16000)
    parser.add_argument(
        "--settle", type=float, default=35.0, help="seconds idle before the idle figures"
    )
    args = parser.parse_args()
    rows: list[tuple[str, dict[str, float]]] = []
    for n in (int(size) for size in args.sizes.split(",") if size):
        lab = Lab(guests=n)
        started = time.monotonic()
        lab.up()
        print(f"== N = {n}: lab built in {time.monotonic() - started:.1f} s", flush=True)
        try:
            modes = [False, True] if n <= args.exec_up_to else [True]
            for zygote in modes:
                label = "zygote" if zygote else "exec"
                print(f"-- workers by {label}", flush=True)
                rows.append((label, measure(lab, zygote, lab.workdir / label, args.settle)))
                if zygote is False:
                    reset_guests(lab)
        finally:
            lab.down()
    if args.fastpath_neighbors:  # 0: the labs only
        asyncio.run(fastpath_figures(args.fastpath_neighbors, 50))
        bpf_figures(args.fastpath_neighbors, 200)
    print()
    print(
        "| N | workers | READY=1 s | ready s | worker USS / PSS MiB | all USS / PSS MiB |"
        " supervisor USS MiB | zygote USS MiB | idle CPU % | wake-ups/s per process (median/max)"
        " | status p50/p99 ms | restart ND p50/max ms | outage p50 ms |"
    )
    print("|" + " --- |" * 13)
    for label, f in rows:
        print(
            f"| {f['N']:.0f} | {label} | {f['ready_1_s']:.1f} | {f['ready_s']:.1f} |"
            f" {f['worker_uss']:.1f} / {f['worker_pss']:.1f} |"
            f" {f['total_uss']:.0f} / {f['total_pss']:.0f} | {f['supervisor_uss']:.1f} |"
            f" {f['zygote_uss']:.1f} | {f['idle_cpu']:.1f} |"
            f" {f['wakeups']:.1f} / {f['wakeups_max']:.1f} |"
            f" {f['status_p50_ms']:.2f} / {f['status_p99_ms']:.2f} |"
            f" {f['restart_p50_ms']:.0f} / {f['restart_max_ms']:.0f} |"
            f" {f['outage_p50_ms']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
