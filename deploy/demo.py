"""`make demo`: Portier doing its job on real kernel hosts, in about half a minute.

Builds a lab (deploy/lab.py: a router running radvd, the proxy host, two guests), starts
portierd on the proxy host with a generated configuration, and shows what an operator
would check: each guest's SLAAC address from the router's prefix, pings both ways with
the hop limit untouched, `portierctl status` and the neighbor table, and the metrics.
Then it stops cleanly.  With --keep it stays up and says how to look around.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import contextlib

from lab import ROUTER_ADDRESS, Lab
from labdaemon import Daemon


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def ping_summary(result: subprocess.CompletedProcess[str]) -> str:
    ttl = re.search(r"ttl=(\d+)", result.stdout)
    rtt = re.search(r"= [\d.]+/([\d.]+)/", result.stdout)
    if result.returncode != 0:
        return "FAILED"
    return f"ok, hop limit {ttl.group(1) if ttl else '?'}, rtt {rtt.group(1) if rtt else '?'} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", action="store_true", help="stay up until Ctrl-C")
    parser.add_argument("--guests", type=int, default=2)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("make demo builds network namespaces: run it as root", file=sys.stderr)
        return 1
    started = time.monotonic()
    step(f"building the lab: router (radvd), proxy host, {args.guests} guests")
    lab = Lab(guests=args.guests).up()
    try:
        print(f"   namespaces: {', '.join(lab.namespaces)}")
        step("starting portierd on the proxy host")
        daemon = Daemon(lab).start()
        print(f"   configuration: {daemon.config}")
        print("   " + "\n   ".join(daemon.config.read_text().strip().splitlines()[-4:]))
        step("guests configure themselves from the router's prefix (SLAAC through the proxy)")
        addresses = {}
        for guest in lab.guest_list:
            addresses[guest.name] = lab.wait_slaac(guest)
            print(f"   {guest.name}: {addresses[guest.name]}")
        step("pings through the proxy (the hop limit arrives as sent: a proxy, not a router)")
        for guest in lab.guest_list:
            lab.wait_ping(guest.name, ROUTER_ADDRESS)
            there = lab.ping(guest.name, ROUTER_ADDRESS, count=3)
            back = lab.ping(lab.router, addresses[guest.name], count=3)
            print(f"   {guest.name} -> router {ROUTER_ADDRESS}: {ping_summary(there)}")
            print(f"   router -> {guest.name}: {ping_summary(back)}")
        step("portierctl status")
        print(daemon.ctl("status", json_output=False).stdout.rstrip())
        step("portierctl neighbors")
        print(daemon.ctl("neighbors", json_output=False).stdout.rstrip())
        step("metrics")
        url = "http://127.0.0.1:9470/metrics"
        print(f"   {url} (inside the proxy host: ip netns exec {lab.proxy} curl {url})")
        metrics = lab.ns(
            lab.proxy,
            sys.executable,
            "-c",
            f"import urllib.request; print(urllib.request.urlopen('{url}').read().decode())",
        ).stdout
        for line in metrics.splitlines():
            if line.startswith(
                (
                    "portier_frames_forwarded_total",
                    "portier_neighbors{",
                    'portier_workers{state="running"}',
                )
            ):
                print(f"   {line}")
        print(f"\n(took {time.monotonic() - started:.1f} s)")
        if args.keep:
            socket_path = daemon.control_socket
            print(
                f"""
The lab stays up.  Look around:
   portierctl --socket {socket_path} interfaces
   portierctl --socket {socket_path} watch
   ip netns exec {lab.guest_list[0].name} ping {ROUTER_ADDRESS}
   ip netns exec {lab.proxy} curl -s {url}
   less {daemon.log_path}
Stop with Ctrl-C (or kill -TERM {os.getpid()}); everything is removed.""",
                flush=True,
            )
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            with contextlib.suppress(KeyboardInterrupt):
                stop.wait()
        step("stopping portierd and removing the lab")
        code = daemon.stop()
        print(f"   portierd exited with {code}")
    finally:
        lab.down()
    print("   done: no namespace, process or file left behind")
    return 0


if __name__ == "__main__":
    sys.exit(main())
