"""Run the real portierd inside a lab's proxy namespace, as the demo and the tests do."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from lab import Lab, LabError, wait_for


@dataclass
class GroupSpec:
    name: str
    upstream: str | None
    members: list[str] = field(default_factory=list)


def render_config(
    workdir: Path, groups: list[GroupSpec], extra: str = "", *, worker_zygote: bool = True
) -> str:
    lines = [
        extra,
        "[daemon]",
        f'runtime_dir = "{workdir}/run"',
        f'state_dir = "{workdir}/state"',
        f"worker_zygote = {str(worker_zygote).lower()}",
        "",
    ]
    for group in groups:
        lines.append("[[group]]")
        lines.append(f'name = "{group.name}"')
        if group.upstream:
            lines.append(f'upstream = "{group.upstream}"')
        lines.append("members = [" + ", ".join(f'"{m}"' for m in group.members) + "]")
    return "\n".join(lines) + "\n"


def lab_groups(lab: Lab) -> list[GroupSpec]:
    """`lan` = up0 + the lab's ordinary guests; `iso` = its isolated guests, no upstream."""
    members = [g.port for g in lab.guest_list if g.group == "lan"]
    if lab.nested:
        members.append(lab.inner_port)
    groups = [GroupSpec("lan", "up0", members)]
    isolated = [g.port for g in lab.guest_list if g.group == "iso"]
    if isolated:
        groups.append(GroupSpec("iso", None, isolated))
    return groups


METRICS_URL = "http://127.0.0.1:9470/metrics"


def metrics_text(lab: Lab, namespace: str | None = None) -> str:
    """portierd's /metrics, fetched from inside the proxy host (where it listens)."""
    code = f"import urllib.request;print(urllib.request.urlopen({METRICS_URL!r}).read().decode())"
    return lab.ns(namespace or lab.proxy, sys.executable, "-c", code).stdout


def metric_samples(text: str) -> dict[str, float]:
    """Exposition text as {'name{labels}': value}, the series spelled as portierd prints it."""
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            samples[series] = float(value)
    return samples


class Daemon:
    def __init__(
        self,
        lab: Lab,
        groups: list[GroupSpec] | None = None,
        extra: str = "",
        *,
        namespace: str | None = None,
        workdir: Path | None = None,
        worker_zygote: bool = True,
    ) -> None:
        """portierd in the lab's proxy host (or `namespace`), its files under `workdir`."""
        self.lab = lab
        self.namespace = namespace or lab.proxy
        self.workdir = workdir or lab.workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = self.workdir / "portier.toml"
        self.config.write_text(
            render_config(
                self.workdir, groups or lab_groups(lab), extra, worker_zygote=worker_zygote
            )
        )
        self.runtime_dir = self.workdir / "run"
        self.log_path = self.workdir / "portierd.log"
        self.process: subprocess.Popen | None = None
        self.notify_path = self.workdir / "notify.sock"
        self.notify: socket.socket | None = None

    def start(self, timeout: float = 30.0, launcher: list[str] | None = None) -> Daemon:
        """Start portierd (behind `launcher`, e.g. setpriv) and wait for its READY=1."""
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify_path.unlink(missing_ok=True)  # an earlier daemon's in the same lab
        self.notify.bind(str(self.notify_path))
        os.chmod(self.notify_path, 0o666)  # portierd may run as another user
        env = dict(os.environ, NOTIFY_SOCKET=str(self.notify_path))
        self.process = self.lab.spawn(
            self.namespace,
            *(launcher or []),
            sys.executable,
            "-m",
            "portier.supervisor",
            "--config",
            str(self.config),
            "--log-level",
            "debug",
            stdout=self.log_path.open("a"),
            stderr=subprocess.STDOUT,
            env=env,
        )
        self.wait_notify("READY=1", timeout)
        return self

    def wait_notify(self, word: str, timeout: float) -> str:
        assert self.notify is not None
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LabError(
                    f"portierd did not say {word} within {timeout} s:\n{self.log_tail()}"
                )
            self.notify.settimeout(remaining)
            try:
                message = self.notify.recv(4096).decode()
            except TimeoutError:
                continue
            if word in message.splitlines():
                return message

    @property
    def control_socket(self) -> str:
        return str(self.runtime_dir / "control.sock")

    def ctl(
        self, *argv: str, json_output: bool = True, check: bool = False, user: int | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run the real portierctl against this daemon."""
        command = [sys.executable, "-m", "portier.ctl", "--socket", self.control_socket]
        if json_output:
            command.append("--json")
        if user is not None:
            command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *command]
        result = subprocess.run([*command, *argv], capture_output=True, text=True, timeout=30)
        if check and result.returncode != 0:
            raise LabError(f"portierctl {' '.join(argv)} failed: {result.stderr}")
        return result

    def call(self, *argv: str) -> object:
        """portierctl --json ARGV, which must succeed; its result."""
        return json.loads(self.ctl(*argv, check=True).stdout)["result"]

    def metrics(self) -> dict[str, float]:
        return metric_samples(metrics_text(self.lab, self.namespace))

    def status(self, timeout: float = 10.0) -> dict:
        """Ask for a status dump (SIGUSR1) and read it."""
        path = self.runtime_dir / "status.json"
        path.unlink(missing_ok=True)
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGUSR1)
        wait_for(path.exists, timeout, "status.json after SIGUSR1")
        return json.loads(path.read_text())

    def worker(self, interface: str) -> dict:
        return next(w for w in self.status()["workers"] if w["interface"] == interface)

    def stop(self, timeout: float = 15.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise LabError(
                f"portierd still running {timeout:.0f} s after SIGTERM; its log:\n{self.log_tail()}"
            ) from None
        if self.notify is not None:
            self.notify.close()
        return code

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return "(no log)"


def netns_available() -> bool:
    if os.geteuid() != 0:
        return False
    probe = f"ptprobe{os.getpid()}"
    ok = subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode == 0
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return ok
