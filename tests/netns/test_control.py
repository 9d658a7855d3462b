"""The control plane through the real daemon over the real socket, as operators use it."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import pytest
from lab import ROUTER_ADDRESS, wait_for
from labdaemon import Daemon
from peers import PEERS

from portier.control import ControlClient
from portier.schema import SCHEMA_VERSION


@pytest.fixture
def proxy(make_lab):
    """A lab with two guests, portierd running, and a spare veth (spare0) to bind."""
    lab = make_lab(guests=2)
    lab.ns(lab.proxy, "ip", "link", "add", "spare0", "type", "veth", "peer", "name", "spare1")
    lab.ns(lab.proxy, "ip", "link", "set", "spare0", "up")
    lab.ns(lab.proxy, "ip", "link", "set", "spare1", "up")
    daemon = Daemon(lab).start()
    wait_for(lambda: daemon.call("status")["forwarding"] == 3, 10, "every member forwarding")
    return daemon


def loop_guest(daemon: Daemon, guest, port: str) -> None:
    """Make a guest send an RA, and wait for its member to be loop-disabled."""
    daemon.lab.wait_link_local(guest.name)
    daemon.lab.ns(guest.name, sys.executable, PEERS, "ra", "eth0", "00")
    wait_for(
        lambda: (
            "loop_detected"
            in next(i for i in daemon.call("interfaces") if i["name"] == port)["disable_reasons"]
        ),
        10,
        f"{port} loop-disabled",
    )


def reply(daemon: Daemon, *argv: str) -> tuple[int, dict | None, str]:
    result = daemon.ctl(*argv)
    document = json.loads(result.stdout) if result.stdout.strip() else None
    return result.returncode, document, result.stderr


def test_the_original_operations_and_their_outcomes(proxy):
    cases = [
        (["bind", "spare0"], 0, "SUCCESS"),
        (["bind", "spare0"], 1, "Already Exists: Failed to bind spare0"),
        (["group", "create", "extra"], 0, "SUCCESS"),
        (["group", "create", "extra"], 1, "Already Exists"),
        (["group", "create", "no good"], 1, "Invalid Argument"),
        (["add", "spare0", "extra", "--upstream"], 0, "SUCCESS"),
        (
            ["add", "spare0", "extra"],
            1,
            "Already Exists: Failed to add spare0 to group extra: "
            "Interface spare0 is already in group extra",
        ),
        (["add", "ghost0", "extra"], 1, "Does Not Exist"),
        (["add", "vm1", "ghosts"], 1, "Does Not Exist"),
        (["upstream", "unset", "extra"], 0, "SUCCESS"),
        (["upstream", "unset", "ghosts"], 1, "Does Not Exist"),
        (["upstream", "set", "spare0"], 0, "SUCCESS"),
        (["upstream", "set", "ghost0"], 1, "Does Not Exist"),
        (["remove", "spare0"], 0, "SUCCESS"),
        (["remove", "spare0"], 0, "NO_OPERATION"),
        (["upstream", "set", "spare0"], 1, "Failed Precondition: Interface spare0 is in no group"),
        (["remove", "ghost0"], 1, "Does Not Exist"),
        (["group", "release", "extra"], 0, "SUCCESS"),
        (["group", "release", "extra"], 1, "Does Not Exist"),
        (["release", "spare0"], 0, "SUCCESS"),
        (["release", "spare0"], 1, "Does Not Exist: Interface spare0 is not bound"),
    ]
    for argv, code, words in cases:
        returncode, document, stderr = reply(proxy, *argv)
        assert returncode == code, (argv, stderr)
        if code == 0:
            assert document["outcome"] == words, (argv, document)
        else:
            assert stderr.startswith(f"portierctl: {words}"), (argv, stderr)
    # The original's outcome names travel in the reply, failures included.
    with ControlClient(proxy.control_socket) as client:
        assert client.request("upstream_set", interface="ghost0").outcome == "IF_DOES_NOT_EXIST"
        assert client.request("upstream_set", interface="vm1").outcome == "SUCCESS"
        assert client.request("bind", interface="vm1").outcome == "EXISTS"
        assert client.request("remove", interface="ghost0").outcome == "DOES_NOT_EXIST"
        client.call("bind", interface="spare0")
        assert client.request("upstream_set", interface="spare0").outcome == "GROUP_DOES_NOT_EXIST"


def test_views_and_operator_commands(proxy):
    lab = proxy.lab
    guest1, guest2 = lab.guest_list
    address1 = lab.wait_slaac(guest1)
    lab.wait_ping(guest1.name, ROUTER_ADDRESS)
    status = proxy.call("status")
    assert status["ready"] and status["interfaces"] == 3 and status["forwarding"] == 3
    assert status["workers"] == {"running": 3} and status["frames"]["forwarded"] > 0
    assert proxy.call("groups")[0] == {
        "name": "lan",
        "upstream": "up0",
        "members": ["up0", "vm1", "vm2"],
        "patterns": [],
        "bound": {},
        "onlink_prefixes": ["2001:db8:1::/64"],
    }
    neighbors = proxy.call("neighbors", "--group", "lan")
    assert {"address": address1, "interface": "vm1"}.items() <= next(
        n for n in neighbors if n["address"] == address1
    ).items()
    assert proxy.ctl("neighbors", "--group", "ghosts").returncode == 1
    workers = {w["interface"]: w for w in proxy.call("workers")}
    assert set(workers) == {"up0", "vm1", "vm2"} and all(w["pid"] for w in workers.values())
    assert all(w["state"] == "running" and w["restarts"] == 0 for w in workers.values()), workers

    # A guest that sends an RA is a loop: its member is disabled, visibly, until enabled.
    loop_guest(proxy, guest2, "vm2")
    vm2 = next(i for i in proxy.call("interfaces") if i["name"] == "vm2")
    assert not vm2["forwarding"] and 3500 < vm2["loop_disabled_for_s"] <= 3600
    assert proxy.call("status")["disabled"] == {"vm2": ["loop_detected"]}
    assert proxy.call("enable", "vm2") is None
    assert next(i for i in proxy.call("interfaces") if i["name"] == "vm2")["forwarding"]
    code, document, _ = reply(proxy, "enable", "vm2")
    assert code == 0 and document["code"] == "NO_OPERATION"

    assert proxy.call("nested", "on") is None
    assert json.loads(proxy.ctl("nested", "on").stdout)["code"] == "NO_OPERATION"
    assert proxy.call("status")["nested"]
    flushed = proxy.call("flush", "--group", "lan")["flushed"]
    assert flushed >= 2
    # The quiet guest is forgotten (the router's periodic RAs may be relearned at once)...
    assert address1 not in {n["address"] for n in proxy.call("neighbors")}
    # ...and forwarding relearns it.
    lab.wait_ping(guest1.name, ROUTER_ADDRESS)
    assert address1 in {n["address"] for n in proxy.call("neighbors")}


def test_human_output_and_exit_codes(proxy):
    result = proxy.ctl("workers", json_output=False)
    assert result.returncode == 0 and result.stdout.splitlines()[0].split()[:3] == [
        "INTERFACE",
        "STATE",
        "PID",
    ]
    result = proxy.ctl("bind", "ghost0", json_output=False)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "portierctl: Does Not Exist: Failed to bind ghost0: Failed to get interface index: "
        "Interface ghost0 does not exist"
    )
    missing = subprocess.run(
        [sys.executable, "-m", "portier.ctl", "--socket", "/nonexistent/control.sock", "status"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert missing.returncode == 3 and "portierd is not running" in missing.stderr


def configuration(daemon: Daemon) -> tuple:
    """What an operator configured (link facts such as addresses change by themselves)."""
    interfaces = [
        (i["name"], i["group"], i["role"], i["forwarding"], i["disable_reasons"])
        for i in daemon.call("interfaces")
    ]
    groups = [(g["name"], g["upstream"], g["members"]) for g in daemon.call("groups")]
    return groups, interfaces, daemon.call("status")["nested"]


def raw_request(daemon: Daemon, payload: bytes) -> dict:
    with ControlClient(daemon.control_socket, timeout_s=5) as client:
        client.send_raw(payload)
        return client.receive(any_reply=True)


def packed(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


@pytest.mark.parametrize(
    ("payload", "code", "words"),
    [
        (
            packed({"v": SCHEMA_VERSION, "op": "frobnicate", "id": 1, "args": {}}),
            4,
            "unknown operation",
        ),
        (
            packed({"v": SCHEMA_VERSION, "op": "bind", "id": 2, "args": {"interface": 7}}),
            4,
            "must be str",
        ),
        (
            packed({"v": SCHEMA_VERSION, "op": "add", "id": 3, "args": {"interface": "vm1"}}),
            4,
            "missing field 'group'",
        ),
        (packed({"v": SCHEMA_VERSION, "op": "status", "id": 4})[:-2], 4, "not valid msgpack"),
        (
            packed({"v": SCHEMA_VERSION, "op": "status", "id": 5, "args": {"pad": "x" * 70000}}),
            4,
            "exceeds",
        ),
        (packed({"v": 99, "op": "status", "id": 6, "args": {}}), 5, "schema version 99"),
        (
            packed({"v": SCHEMA_VERSION, "op": "bind", "id": 7, "args": {"interface": ""}}),
            4,
            "non-empty",
        ),
        (
            packed({"v": SCHEMA_VERSION, "op": "bind", "id": 8, "args": {"interface": "x" * 16}}),
            4,
            "longer than 15",
        ),
        (
            packed({"v": SCHEMA_VERSION, "op": "bind", "id": 9, "args": {"interface": "a/b c"}}),
            4,
            "invalid characters",
        ),
        (
            packed({"v": SCHEMA_VERSION, "op": "bind", "id": 10, "args": {"interface": "ghost0"}}),
            1,
            "does not exist",
        ),
        (
            packed({"v": SCHEMA_VERSION, "op": "bind", "id": 11, "args": {"interface": "vm1"}}),
            2,
            "already bound",
        ),
        (
            packed(
                {"v": SCHEMA_VERSION, "op": "remove", "id": 12, "args": {"interface": "spare0"}}
            ),
            1,
            "not bound",
        ),
        (
            packed({"v": SCHEMA_VERSION, "op": "nested", "id": 13, "args": {"enabled": "yes"}}),
            4,
            "must be bool",
        ),
        (b"\x00\x01\x02", 4, "not valid msgpack"),
    ],
)
def test_bad_requests_get_coded_replies_and_change_nothing(proxy, payload, code, words):
    before = configuration(proxy)
    answer = raw_request(proxy, payload)
    assert answer["code"] == code and not answer["ok"], answer
    assert words in answer["message"], answer
    assert configuration(proxy) == before
    assert proxy.call("status")["ready"]  # still serving


def test_removing_from_no_group_says_what_to_do(proxy):
    proxy.call("bind", "spare0")
    code, document, _ = reply(proxy, "remove", "spare0")
    assert code == 0 and document["code"] == "NO_OPERATION"
    assert "in no group" in document["message"]


def test_refused_users(proxy):
    # A user outside the control group cannot even open the socket file.
    result = proxy.ctl("status", user=12345)
    assert result.returncode == 3 and "Permission denied" in result.stderr
    # Were the file opened to everyone, the daemon's own check still refuses the peer.
    os.chmod(proxy.control_socket, 0o666)
    os.chmod(proxy.runtime_dir, 0o755)
    os.chmod(proxy.lab.workdir, 0o755)
    result = proxy.ctl("status", user=12345)
    assert result.returncode == 3 and "refused this client" in result.stderr
    assert "control access refused: uid 12345" in proxy.log_path.read_text()
    assert proxy.ctl("status").returncode == 0  # root still served


def test_members_of_the_control_group_are_served(make_lab):
    lab = make_lab(guests=1)
    daemon = Daemon(lab, extra="").start()
    daemon.stop()
    daemon = Daemon(lab)
    daemon.config.write_text(
        daemon.config.read_text().replace("[daemon]", '[daemon]\ncontrol_group = "nogroup"')
    )
    daemon.start()
    os.chmod(daemon.runtime_dir, 0o755)
    os.chmod(lab.workdir, 0o755)
    mode = os.stat(daemon.control_socket)
    assert oct(mode.st_mode & 0o777) == "0o660" and mode.st_gid == 65534
    result = subprocess.run(
        [
            "setpriv",
            "--reuid=12345",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-m",
            "portier.ctl",
            "--socket",
            daemon.control_socket,
            "--json",
            "status",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["result"]["ready"]


def test_reload_applies_a_diff_and_rejects_bad_files(proxy):
    lab = proxy.lab
    guest1 = lab.guest_list[0]
    lab.wait_slaac(guest1)
    lab.wait_ping(guest1.name, ROUTER_ADDRESS)
    pids = {w["interface"]: w["pid"] for w in proxy.call("workers")}
    learned = {n["address"] for n in proxy.call("neighbors")}
    original = proxy.config.read_text()
    proxy.config.write_text(original + '\n[[group]]\nname = "extra"\nmembers = ["spare0"]\n')
    result = proxy.call("reload")
    assert result["changes"] == {
        "create_groups": ["extra"],
        "bind_interfaces": ["spare0"],
        "memberships": [["spare0", "extra", False]],
    }
    wait_for(
        lambda: (
            {w["interface"]: w["state"] for w in proxy.call("workers")}.get("spare0") == "running"
        ),
        15,
        "a worker for spare0",
    )
    after = {w["interface"]: w["pid"] for w in proxy.call("workers")}
    assert {k: after[k] for k in pids} == pids  # untouched workers kept running
    assert learned <= {n["address"] for n in proxy.call("neighbors")}  # and what they learned
    # An invalid file is rejected with the reason; nothing changes.
    proxy.config.write_text(original + '\n[[group]]\nname = "bad"\nmembers = ["vm1"]\n')
    code, _, stderr = reply(proxy, "reload")
    assert code == 1 and "Configuration rejected; the running state is unchanged" in stderr
    assert "group[1].members[0]" in stderr and "already in group lan" in stderr
    assert [g["name"] for g in proxy.call("groups")] == ["extra", "lan"]
    # SIGHUP does the same as `portierctl reload`: here it removes the extra group again.
    proxy.config.write_text(original)
    os.kill(proxy.process.pid, signal.SIGHUP)
    wait_for(lambda: [g["name"] for g in proxy.call("groups")] == ["lan"], 10, "SIGHUP reload")
    assert "spare0" not in {w["interface"] for w in proxy.call("workers")}


def test_watch_streams_events(proxy):
    watcher = subprocess.Popen(
        [sys.executable, "-m", "portier.ctl", "--socket", proxy.control_socket, "--json", "watch"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        events = []
        deadline = time.monotonic() + 15
        while not any(e.get("op") == "group_create" for e in events):
            assert time.monotonic() < deadline, f"no group_create event in {events}"
            proxy.call("group", "create", f"g{len(events)}")  # SUB joins late: keep poking
            line = watcher.stdout.readline()
            events.append(json.loads(line))
        event = next(e for e in events if e.get("op") == "group_create")
        assert event["kind"] == "state" and event["group"].startswith("g")
    finally:
        watcher.terminate()
        watcher.wait(timeout=10)


def test_state_survives_kill_9_of_portierd(make_lab):
    lab = make_lab(guests=2)
    lab.ns(lab.proxy, "ip", "link", "add", "spare0", "type", "veth", "peer", "name", "spare1")
    daemon = Daemon(lab).start()
    guest1, guest2 = lab.guest_list
    address1 = lab.wait_slaac(guest1)
    lab.wait_ping(guest1.name, ROUTER_ADDRESS)
    daemon.call("group", "create", "extra")
    daemon.call("bind", "spare0")
    daemon.call("add", "spare0", "extra", "--upstream")
    daemon.call("nested", "on")
    loop_guest(daemon, guest2, "vm2")
    learned = {(n["group"], n["address"]) for n in daemon.call("neighbors")}
    assert ("lan", address1) in learned
    state_file = lab.workdir / "state" / "state.msgpack"
    wait_for(
        lambda: address1.encode() in state_file.read_bytes() or _saved(state_file, address1),
        10,
        "the learned neighbors in the state file",
    )
    daemon.process.kill()  # SIGKILL: no chance to write anything more
    daemon.process.wait(timeout=10)
    wait_for(
        # This daemon's workers only: pgrep sees every process on the host, other labs' too.
        lambda: not lab.ns(lab.proxy, "pgrep", "-f", str(daemon.runtime_dir), check=False).stdout,
        10,
        "orphaned workers to exit",
    )
    time.sleep(1.0)  # let time pass, so that restored timers visibly aged
    again = Daemon(lab)
    again.config.write_text(daemon.config.read_text())
    again.start()
    groups = {g["name"]: g for g in again.call("groups")}
    assert groups["extra"]["upstream"] == "spare0" and groups["extra"]["members"] == ["spare0"]
    assert again.call("status")["nested"]
    vm2 = next(i for i in again.call("interfaces") if i["name"] == "vm2")
    assert vm2["disable_reasons"] == ["loop_detected"] and vm2["loop_disabled_for_s"] < 3599
    restored = {(n["group"], n["address"]): n for n in again.call("neighbors")}
    assert ("lan", address1) in restored
    assert restored[("lan", address1)]["idle_s"] >= 1.0  # aged by the time that passed
    # Bounded, not a single ping: one CI run under load lost the first echo after the
    # restart (not reproduced in isolation); reachability within seconds is the promise.
    lab.wait_ping(lab.router, address1, timeout=10)


def _saved(state_file, address: str) -> bool:
    import ipaddress

    return ipaddress.IPv6Address(address).packed in state_file.read_bytes()


def test_corrupt_state_is_moved_aside(make_lab):
    lab = make_lab(guests=1)
    state_dir = lab.workdir / "state"
    state_dir.mkdir()
    (state_dir / "state.msgpack").write_bytes(b"\x93not a state file")
    daemon = Daemon(lab).start()
    assert [g["name"] for g in daemon.call("groups")] == ["lan"]  # from the configuration
    aside = list(state_dir.glob("state.msgpack.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == b"\x93not a state file"
    assert "is unusable" in daemon.log_path.read_text()


def test_tcp_control_needs_an_authorized_curve_key(make_lab):
    import zmq.auth

    lab = make_lab(guests=1, radvd=False)
    keys = lab.workdir / "keys"
    authorized = lab.workdir / "authorized"
    keys.mkdir()
    authorized.mkdir()
    server_public, server_secret = zmq.auth.create_certificates(str(keys), "server")
    client_public, client_secret = zmq.auth.create_certificates(str(keys), "client")
    _, stranger_secret = zmq.auth.create_certificates(str(keys), "stranger")
    (authorized / "client.key").write_bytes(Path(client_public).read_bytes())
    daemon = Daemon(
        lab,
        extra=(
            "[control]\n"
            'tcp = "tcp://127.0.0.1:9471"\n'
            f'curve_secret_key = "{server_secret}"\n'
            f'curve_authorized_keys = "{authorized}"\n'
        ),
    )
    daemon.start()

    def over_tcp(secret: str | None) -> subprocess.CompletedProcess:
        keys = ["--server-key", server_public, "--key", secret] if secret else []
        return lab.ns(
            lab.proxy,
            sys.executable,
            "-m",
            "portier.ctl",
            "--socket",
            "tcp://127.0.0.1:9471",
            *keys,
            "--timeout",
            "5",
            "--json",
            "status",
            check=False,
        )

    allowed = over_tcp(client_secret)
    assert allowed.returncode == 0, allowed.stderr
    assert json.loads(allowed.stdout)["result"]["ready"]
    refused = over_tcp(stranger_secret)
    assert refused.returncode == 3 and "refused this client" in refused.stderr
    plain = over_tcp(None)
    assert plain.returncode == 1 and "TCP control needs CURVE keys" in plain.stderr


def test_reload_turns_the_fast_path_off_and_on_again(make_lab):
    lab = make_lab(guests=1, radvd=False)
    daemon = Daemon(lab, extra='[fastpath]\nenabled = true\nengine = "nftables"').start()
    wait_for(lambda: daemon.call("status")["fastpath"]["active"], 10, "fast path on")
    status = daemon.call("status")
    assert status["ready"]
    assert set(status["health"]["loops"]) == {
        "worker_channel",
        "timers",
        "control",
        "zap",
        "links",
        "zygote",
    }
    assert all(loop["healthy"] for loop in status["health"]["loops"].values())

    def table_exists() -> bool:
        result = lab.ns(lab.proxy, "nft", "list", "table", "netdev", "portier", check=False)
        return result.returncode == 0

    assert table_exists()
    on = daemon.config.read_text()
    daemon.config.write_text(on.replace("enabled = true", "enabled = false"))
    assert daemon.call("reload")["changes"] == {"fastpath": "off"}
    text = daemon.ctl("status", json_output=False, check=True).stdout
    assert "fast path off (disabled by configuration)" in text.splitlines()
    assert not table_exists()
    daemon.config.write_text(on)
    assert daemon.call("reload")["changes"] == {"fastpath": "on"}
    wait_for(lambda: daemon.call("status")["fastpath"]["active"], 10, "fast path on again")
    assert table_exists()


def test_an_operation_that_cannot_be_saved_applies_says_so_and_is_saved_later(make_lab):
    lab = make_lab(guests=1, radvd=False)
    daemon = Daemon(lab)
    state_dir = daemon.workdir / "state"
    state_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(state_dir)], check=True
    )
    try:
        daemon.start()
        filler = state_dir / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            with pytest.raises(OSError, match="No space left"):
                for _ in range(1000):  # 512 KiB, far more than the 64 KiB there are
                    os.write(fd, b"\0" * 512)
        finally:
            os.close(fd)
        result = daemon.ctl("group", "create", "extra", json_output=False)
        assert result.returncode == 0, result.stderr
        assert "state could not be saved: No space left on device" in result.stderr
        assert "extra" in [g["name"] for g in daemon.call("groups")]  # applied all the same
        text = daemon.ctl("status", json_output=False, check=True).stdout
        line = next(ln for ln in text.splitlines() if ln.startswith("state not saved since "))
        assert line.endswith(": No space left on device")
        assert daemon.call("status")["state_save"]["failures"] >= 1
        filler.unlink()
        wait_for(lambda: daemon.call("status")["state_save"]["error"] is None, 10, "saved again")
        text = daemon.ctl("status", json_output=False, check=True).stdout
        assert "state not saved" not in text
        daemon.stop()
        again = Daemon(lab).start()  # what was applied while the disk was full came back
        assert "extra" in [g["name"] for g in again.call("groups")]
        again.stop()
    finally:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait()
        if subprocess.run(["umount", str(state_dir)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(state_dir)], check=False)
