"""portierctl's status lines: fast path, saving and loop health said in words."""

import datetime

from portier.ctl import fastpath_line, health_lines, render, state_save_line


def status(**fields):
    base = {
        "version": "0.1.0",
        "pid": 1,
        "uptime_s": 3.0,
        "ready": True,
        "groups": 1,
        "interfaces": 2,
        "forwarding": 2,
        "neighbors": 0,
        "workers": {"running": 2},
        "frames": {},
        "fastpath": {"active": True, "neighbors": 3, "kernel_packets": 9, "reason": ""},
        "nested": False,
        "loop_disable_s": 3600.0,
        "disabled": {},
        "health": {"loops": {}},
        "state_save": {"error": None, "failing_since": None, "saved_at": 1.0, "failures": 0},
    }
    return {**base, **fields}


def test_fast_path_on_and_off_with_the_reason():
    assert fastpath_line({"active": True, "neighbors": 3, "kernel_packets": 9}).startswith(
        "fast path on"
    )
    line = fastpath_line(
        {"active": False, "reason": "cannot run nft: Permission denied", "retry_in_s": 4.0}
    )
    assert line == "fast path off (cannot run nft: Permission denied), retrying in 4 s"
    assert fastpath_line({"active": False, "reason": "disabled by configuration"}) == (
        "fast path off (disabled by configuration)"
    )


def test_state_not_saved_since_a_local_time():
    since = datetime.datetime(2026, 12, 2, 18, 0, 5).astimezone()
    line = state_save_line(
        {"error": "No space left on device", "failing_since": since.timestamp(), "failures": 3}
    )
    assert (
        line
        == f"state not saved since {since.isoformat(timespec='seconds')}: No space left on device"
    )
    assert state_save_line({"error": None, "failing_since": None}) is None


def test_unhealthy_loops_are_named():
    lines = health_lines(
        {
            "loops": {
                "timers": {"healthy": True, "restarts": 0, "last_error": None},
                "worker_channel": {
                    "healthy": False,
                    "restarts": 2,
                    "last_error": "PermissionError: [Errno 13] Permission denied",
                },
            }
        }
    )
    assert lines == [
        "unhealthy: supervisor loop worker_channel (2 restarts, last error:"
        " PermissionError: [Errno 13] Permission denied)"
    ]


def test_status_prints_every_line():
    text = render(
        "status",
        status(
            ready=False,
            fastpath={"active": False, "reason": "nft not found", "neighbors": 0},
            state_save={"error": "Read-only file system", "failing_since": 0.0},
            health={"loops": {"control": {"healthy": False, "restarts": 1, "last_error": "x"}}},
        ),
    )
    lines = text.splitlines()
    assert "fast path off (nft not found)" in lines
    assert any(line.startswith("state not saved since ") for line in lines)
    assert any(line.startswith("unhealthy: supervisor loop control") for line in lines)
    assert lines[0].endswith(", not ready")
    assert render("status", status(ready=False)).splitlines()[0].endswith(", starting")
    healthy = render("status", status()).splitlines()
    assert not any("unhealthy" in line or "not saved" in line for line in healthy)
