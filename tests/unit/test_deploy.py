"""The deployment files: unit verified by systemd, alert rules by promtool, the rest parsed."""

import json
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from portier.config import parse_config
from portier.logs import KeyValueFormatter, RateLimiter

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_unit_verifies(tmp_path):
    # verify insists that ExecStart exists: point it at this checkout's portierd.
    portierd = shutil.which("portierd") or str(Path(__file__).parents[2] / ".venv/bin/portierd")
    unit = (DEPLOY / "systemd" / "portierd.service").read_text()
    assert "Type=notify" in unit and "WatchdogSec=" in unit
    assert "AmbientCapabilities=CAP_NET_RAW CAP_NET_ADMIN" in unit
    copy = tmp_path / "portierd.service"
    copy.write_text(unit.replace("/usr/local/bin/portierd", portierd))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "portierd.service" not in result.stderr, result.stderr


@pytest.mark.skipif(shutil.which("promtool") is None, reason="no promtool here")
def test_alert_rules_check_and_pass_their_unit_tests():
    rules = DEPLOY / "prometheus"
    for argv in (
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],
        ["check", "config", "--syntax-only", "scrape.yml"],
    ):
        result = subprocess.run(
            ["promtool", *argv], cwd=rules, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_example_configuration_is_valid():
    config = parse_config((DEPLOY / "portier.toml").read_text(), "portier.toml")
    assert config.metrics_listen.startswith("127.0.0.1:")
    assert [g.name for g in config.groups] == ["lan"]
    tomllib.loads((DEPLOY / "portier.toml").read_text())


def test_dashboard_is_grafana_json():
    dashboard = json.loads((DEPLOY / "grafana" / "portier-dashboard.json").read_text())
    assert dashboard["uid"] == "portier" and len(dashboard["panels"]) >= 10
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert all(
        t["expr"].count("(") == t["expr"].count(")")
        for p in dashboard["panels"]
        for t in p["targets"]
    )


def test_journald_lines_carry_their_priority(monkeypatch):
    import logging

    record = logging.LogRecord("portier", logging.WARNING, __file__, 1, "loop detected", (), None)
    record.fields = {"interface": "vm1", "group": "lan"}
    assert KeyValueFormatter("portierd", journald=True).format(record) == (
        "<4>loop detected interface=vm1 group=lan"
    )
    plain = KeyValueFormatter("portierd", journald=False).format(record)
    assert plain.endswith(" portierd warning loop detected interface=vm1 group=lan")


def test_rate_limiter_lets_a_burst_through_then_counts():
    limiter = RateLimiter(burst=2, interval_s=10)
    assert [limiter.allow("k", t)[0] for t in (0, 1, 2, 3)] == [True, True, False, False]
    assert limiter.allow("other", 3) == (True, 0)
    assert limiter.allow("k", 10.5) == (True, 2)  # a new window reports what it held back
