"""Configuration: the contract's schema, and errors that name the file and the field."""

import pytest

from portier.config import ConfigError, load_config, parse_config

FULL = """
nested = true
loop_disable_seconds = 120

[daemon]
runtime_dir = "/tmp/run"
state_dir = "/tmp/state"
control_group = "wheel"

[metrics]
listen = "[::1]:9470"

[[group]]
name = "lan"
upstream = "eth0"
members = ["tap0", "tap1"]

[[group]]
name = "lab"
members = ["tap2"]
"""


def test_full_configuration():
    config = parse_config(FULL, "/etc/portier/portier.toml")
    assert config.nested and config.loop_disable_seconds == 120
    assert str(config.runtime_dir) == "/tmp/run" and config.control_group == "wheel"
    assert config.metrics_listen == "[::1]:9470"
    assert [(g.name, g.upstream, g.members) for g in config.groups] == [
        ("lan", "eth0", ("tap0", "tap1")),
        ("lab", None, ("tap2",)),
    ]
    assert config.groups[0].interfaces == ("eth0", "tap0", "tap1")


def test_defaults():
    config = parse_config("")
    assert not config.nested and config.loop_disable_seconds == 3600
    assert str(config.runtime_dir) == "/run/portier"
    assert config.metrics_listen == "127.0.0.1:9470"
    assert config.groups == ()


@pytest.mark.parametrize(
    ("text", "where", "words"),
    [
        ("nested = 1", "nested", "must be bool"),
        ("loop_disable_seconds = 0", "loop_disable_seconds", "greater than 0"),
        ("loop_disable_seconds = true", "loop_disable_seconds", "boolean"),
        ("colour = 1", "colour", "unknown field"),
        ("[daemon]\nruntime = 1", "daemon.runtime", "unknown field"),
        ("[metrics]\nlisten = 9470", "metrics.listen", "must be str"),
        ('[metrics]\nlisten = "localhost"', "metrics.listen", "HOST:PORT"),
        ("[[group]]\nmembers = []", "group[0].name", "is required"),
        ('[[group]]\nname = "a b"', "group[0].name", "letters"),
        ('[[group]]\nname = "a"\n[[group]]\nname = "a"', "group[1].name", "defined twice"),
        ('[[group]]\nname = "a"\nmembers = ["eth0/1"]', "group[0].members[0]", "invalid"),
        ('[[group]]\nname = "a"\nmembers = ["a23456789012345678"]', "group[0].members[0]", "15"),
        (
            '[[group]]\nname = "a"\nupstream = "eth0"\nmembers = ["eth0"]',
            "group[0].members[0]",
            "already in group a",
        ),
        (
            '[[group]]\nname = "a"\nmembers = ["x"]\n[[group]]\nname = "b"\nmembers = ["x"]',
            "group[1].members[0]",
            "already in group a",
        ),
        ("[[group]", "", "not valid TOML"),
        ('[control]\ntcp = "tcp://0.0.0.0:9471"', "control.tcp", "needs CURVE"),
        (
            '[control]\ntcp = "udp://x"\ncurve_secret_key = "a"\ncurve_authorized_keys = "b"',
            "control.tcp",
            "tcp://HOST:PORT",
        ),
    ],
)
def test_errors_name_file_field_and_problem(text, where, words):
    with pytest.raises(ConfigError) as err:
        parse_config(text, "/etc/portier/portier.toml")
    assert err.value.where == where
    assert words in err.value.problem
    assert str(err.value).startswith("/etc/portier/portier.toml: ")


def test_unreadable_file(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "missing.toml")
    assert "cannot read" in str(err.value) and "missing.toml" in str(err.value)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError):
        load_config(binary)
