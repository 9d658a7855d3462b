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


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "+nan"])
@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("loop_disable_seconds = {}", "loop_disable_seconds"),
        ("[neighbors]\nlifetime_seconds = {}", "neighbors.lifetime_seconds"),
    ],
)
def test_non_finite_numbers_are_refused(text, where, value):
    # nan compares false with everything, so a "<= 0" check alone lets it through and
    # `lifetime_seconds = nan` would expire every neighbor at once.
    with pytest.raises(ConfigError) as err:
        parse_config(text.format(value), "/etc/portier/portier.toml")
    assert err.value.where == where
    assert "finite" in err.value.problem


def _certificates(folder, name):
    import zmq.auth

    folder.mkdir(exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(folder), name)
    return folder / public.rsplit("/", 1)[-1], folder / secret.rsplit("/", 1)[-1]


def _tcp_config(tmp_path, secret, authorized):
    path = tmp_path / "portier.toml"
    path.write_text(
        "[control]\n"
        'tcp = "tcp://127.0.0.1:9471"\n'
        f'curve_secret_key = "{secret}"\n'
        f'curve_authorized_keys = "{authorized}"\n'
    )
    return path


def test_curve_files_that_work(tmp_path):
    _public, secret = _certificates(tmp_path / "server", "server")
    _certificates(tmp_path / "keys", "client")
    (tmp_path / "keys" / "client.key_secret").unlink()  # only public keys live there
    config = load_config(_tcp_config(tmp_path, secret, tmp_path / "keys"))
    assert config.curve_authorized_keys == tmp_path / "keys"


def _curve_error(tmp_path, *, secret=None, authorized=None):
    _public, server_secret = _certificates(tmp_path / "server", "server")
    _certificates(tmp_path / "keys", "client")
    path = _tcp_config(tmp_path, secret or server_secret, authorized or tmp_path / "keys")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: ")
    return err.value


def test_missing_authorized_keys_folder_is_an_error(tmp_path):
    # Silently authorizing no one leaves an operator with a TCP socket nobody may use.
    error = _curve_error(tmp_path, authorized=tmp_path / "nowhere")
    assert error.where == "control.curve_authorized_keys"
    assert "nowhere" in error.problem and "No such file or directory" in error.problem


def test_authorized_keys_must_be_a_folder(tmp_path):
    plain = tmp_path / "plain"
    plain.write_text("")
    error = _curve_error(tmp_path, authorized=plain)
    assert error.where == "control.curve_authorized_keys"
    assert "not a folder" in error.problem


def test_malformed_authorized_key_names_the_file(tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "broken.key").write_text('metadata\ncurve\n    public-key = "tooshort"\n')
    error = _curve_error(tmp_path, authorized=keys)
    assert error.where == "control.curve_authorized_keys"
    assert "broken.key" in error.problem and "public key" in error.problem


def test_unreadable_authorized_key_names_the_file(tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "garbage.key").write_bytes(b"\xff\xfe\x00")
    error = _curve_error(tmp_path, authorized=keys)
    assert "garbage.key" in error.problem


@pytest.mark.parametrize("problem", ["missing", "public only", "malformed", "a folder"])
def test_bad_server_secret_key(tmp_path, problem):
    public, secret = _certificates(tmp_path / "server", "server")
    if problem == "missing":
        secret = tmp_path / "absent.key_secret"
        words = "No such file or directory"
    elif problem == "public only":
        secret = public
        words = "no secret key"
    elif problem == "malformed":
        secret = tmp_path / "bad.key_secret"
        secret.write_text('curve\n    public-key = "x"\n    secret-key = "y"\n')
        words = "secret key"
    else:
        secret = tmp_path / "server"
        words = "directory"
    error = _curve_error(tmp_path, secret=secret)
    assert error.where == "control.curve_secret_key"
    assert words in error.problem and str(secret) in error.problem


def test_portierd_exits_2_naming_the_key_problem(tmp_path, capsys):
    from portier.supervisor.main import main

    _public, secret = _certificates(tmp_path / "server", "server")
    path = _tcp_config(tmp_path, secret, tmp_path / "nowhere")
    assert main(["--config", str(path), "--runtime-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"portierd: invalid configuration: {path}: ")
    assert "control.curve_authorized_keys" in err and "No such file or directory" in err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing was started


def test_access_check_reports_a_vanished_folder(tmp_path):
    from portier.supervisor.access import load_authorized_keys

    with pytest.raises(ConfigError) as err:
        load_authorized_keys(tmp_path / "gone")
    assert err.value.where == "control.curve_authorized_keys"


def test_ownership_settings_have_protective_defaults_and_are_checked():
    config = parse_config("", "/etc/portier/portier.toml")
    assert (config.per_member_limit, config.claim_probe_ms) == (256, 1000)
    assert config.last_writer_wins == frozenset()
    text = '[neighbors]\nper_member_limit = 8\nclaim_probe_ms = 250\nlast_writer_wins = ["lab"]'
    config = parse_config(text, "/etc/portier/portier.toml")
    assert (config.per_member_limit, config.claim_probe_ms) == (8, 250)
    assert config.last_writer_wins == frozenset({"lab"})
    for bad, where in [
        ("per_member_limit = 0", "neighbors.per_member_limit"),
        ("claim_probe_ms = 0", "neighbors.claim_probe_ms"),
        ("last_writer_wins = [1]", "neighbors.last_writer_wins[0]"),
    ]:
        with pytest.raises(ConfigError) as err:
            parse_config(f"[neighbors]\n{bad}", "/etc/portier/portier.toml")
        assert err.value.where == where


def test_worker_zygote_is_on_unless_turned_off():
    assert parse_config("").worker_zygote
    assert not parse_config("[daemon]\nworker_zygote = false\n").worker_zygote
    with pytest.raises(ConfigError, match=r"daemon\.worker_zygote"):
        parse_config('[daemon]\nworker_zygote = "yes"\n')


def test_the_fast_path_engine_is_bpf_unless_chosen_otherwise():
    default = parse_config("")
    assert (default.fastpath_engine, default.fastpath_enabled) == ("bpf", True)
    assert parse_config('[fastpath]\nengine = "nftables"\n').fastpath_engine == "nftables"
    off = parse_config('[fastpath]\nengine = "off"\n')
    assert not off.fastpath_enabled
    chosen = parse_config('[fastpath]\nbpf_object = "/usr/lib/portier/portier_tc.o"\n')
    assert str(chosen.fastpath_bpf_object) == "/usr/lib/portier/portier_tc.o"
    with pytest.raises(ConfigError, match=r"fastpath\.engine"):
        parse_config('[fastpath]\nengine = "xdp"\n')
