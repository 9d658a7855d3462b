"""The configuration file (TOML) and its validation.

The whole file is checked before anything starts, and so are the files it names (the
CURVE key pair and the folder of authorized client keys); an error names the file, the
field and what is wrong.  Defaults follow the user-facing contract.  Reading the named key
files is the only I/O besides the configuration file itself; nothing here touches a
socket or an interface.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq.utils.z85

from portier.groups import check_group_name, check_interface_name, check_member_pattern, is_pattern

DEFAULT_PATH = Path("/etc/portier/portier.toml")


class ConfigError(ValueError):
    def __init__(self, path: Path | str, where: str, problem: str) -> None:
        super().__init__(f"{path}: {where}: {problem}" if where else f"{path}: {problem}")
        self.path = str(path)
        self.where = where
        self.problem = problem


@dataclass(frozen=True, slots=True)
class GroupConfig:
    name: str
    upstream: str | None = None
    members: tuple[str, ...] = ()  # names and patterns, as written

    @property
    def interfaces(self) -> tuple[str, ...]:
        """The interfaces named exactly (patterns bind what appears, at run time)."""
        named = tuple(m for m in self.members if not is_pattern(m))
        return ((self.upstream,) if self.upstream else ()) + named

    @property
    def patterns(self) -> tuple[str, ...]:
        return tuple(m for m in self.members if is_pattern(m))


@dataclass(frozen=True, slots=True)
class Config:
    nested: bool = False
    loop_disable_seconds: float = 3600.0
    runtime_dir: Path = Path("/run/portier")
    state_dir: Path = Path("/var/lib/portier")
    control_group: str = "portier"
    worker_zygote: bool = True  # fork workers from a pre-imported zygote (else exec each)
    metrics_listen: str = "127.0.0.1:9470"
    neighbor_capacity: int = 16384
    neighbor_lifetime_seconds: float = 600.0
    per_member_limit: int = 256  # addresses one member may own per group
    claim_probe_ms: int = 1000  # how long an owner has to answer before its address moves
    last_writer_wins: frozenset[str] = frozenset()  # groups with ownership switched off
    announce: bool = True  # an unsolicited NA upstream when a guest address arrives or moves
    control_socket: Path | None = None  # default: runtime_dir/control.sock
    control_tcp: str | None = None  # e.g. "tcp://127.0.0.1:9471", only with CURVE
    curve_secret_key: Path | None = None  # the server's key pair (zmq certificate file)
    curve_authorized_keys: Path | None = None  # clients' public certificates (a folder)
    fastpath_enabled: bool = True
    fastpath_engine: str = "bpf"  # "bpf" (falling back to "nftables"), "nftables" or "off"
    fastpath_bpf_object: Path | None = None  # default: the one built beside its source
    groups: tuple[GroupConfig, ...] = field(default_factory=tuple)
    source: str = "<defaults>"

    @property
    def control_path(self) -> Path:
        return self.control_socket or self.runtime_dir / "control.sock"

    def groups_wire(self) -> list[dict[str, object]]:
        """The groups as plain data, to remember which configuration made the state."""
        return [
            {"name": g.name, "upstream": g.upstream, "members": list(g.members)}
            for g in self.groups
        ]


_TOP = {
    "nested",
    "loop_disable_seconds",
    "daemon",
    "metrics",
    "neighbors",
    "control",
    "fastpath",
    "group",
}
FASTPATH_ENGINES = ("bpf", "nftables", "off")
_CONTROL = {"socket", "tcp", "curve_secret_key", "curve_authorized_keys"}
_DAEMON = {"runtime_dir", "state_dir", "control_group", "worker_zygote"}
_METRICS = {"listen"}
_NEIGHBORS = {
    "capacity",
    "lifetime_seconds",
    "per_member_limit",
    "claim_probe_ms",
    "last_writer_wins",
    "announce",
}
_GROUP = {"name", "upstream", "members"}


def _table(data: dict[str, Any], key: str, allowed: set[str], path: Path) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(path, key, "must be a table")
    _only(value, allowed, key, path)
    return value


def _only(table: dict[str, Any], allowed: set[str], where: str, path: Path) -> None:
    for key in table:
        if key not in allowed:
            name = f"{where}.{key}" if where else key
            raise ConfigError(
                path, name, f"unknown field (expected one of {', '.join(sorted(allowed))})"
            )


def _typed(
    table: dict[str, Any],
    key: str,
    kind: type | tuple[type, ...],
    where: str,
    path: Path,
    default: Any,
) -> Any:
    if key not in table:
        return default
    value = table[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise ConfigError(path, where, f"must be {kinds[0].__name__}, not a boolean")
    if not isinstance(value, kinds):
        raise ConfigError(path, where, f"must be {kinds[0].__name__}, not {type(value).__name__}")
    return value


def _finite(value: float, where: str, path: Path) -> float:
    # TOML has nan and inf; nan compares false with everything, so a range check alone
    # would let it through.
    if not math.isfinite(value):
        raise ConfigError(path, where, f"must be a finite number, not {value}")
    return float(value)


def parse_config(text: str, path: Path | str = "<string>") -> Config:
    path = Path(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "", f"not valid TOML: {exc}") from None
    _only(data, _TOP, "", path)
    nested = _typed(data, "nested", bool, "nested", path, False)
    loop_s = _typed(data, "loop_disable_seconds", (int, float), "loop_disable_seconds", path, 3600)
    loop_s = _finite(loop_s, "loop_disable_seconds", path)
    if loop_s <= 0:
        raise ConfigError(path, "loop_disable_seconds", "must be greater than 0")
    daemon = _table(data, "daemon", _DAEMON, path)
    metrics = _table(data, "metrics", _METRICS, path)
    neighbors = _table(data, "neighbors", _NEIGHBORS, path)
    runtime_dir = _typed(daemon, "runtime_dir", str, "daemon.runtime_dir", path, "/run/portier")
    state_dir = _typed(daemon, "state_dir", str, "daemon.state_dir", path, "/var/lib/portier")
    control_group = _typed(daemon, "control_group", str, "daemon.control_group", path, "portier")
    worker_zygote = _typed(daemon, "worker_zygote", bool, "daemon.worker_zygote", path, True)
    listen = _typed(metrics, "listen", str, "metrics.listen", path, "127.0.0.1:9470")
    _check_listen(listen, path)
    capacity = _typed(neighbors, "capacity", int, "neighbors.capacity", path, 16384)
    if capacity < 1:
        raise ConfigError(path, "neighbors.capacity", "must be at least 1")
    lifetime = _typed(
        neighbors, "lifetime_seconds", (int, float), "neighbors.lifetime_seconds", path, 600
    )
    lifetime = _finite(lifetime, "neighbors.lifetime_seconds", path)
    if lifetime <= 0:
        raise ConfigError(path, "neighbors.lifetime_seconds", "must be greater than 0")
    per_member = _typed(neighbors, "per_member_limit", int, "neighbors.per_member_limit", path, 256)
    if per_member < 1:
        raise ConfigError(path, "neighbors.per_member_limit", "must be at least 1")
    probe_ms = _typed(neighbors, "claim_probe_ms", int, "neighbors.claim_probe_ms", path, 1000)
    if not 10 <= probe_ms <= 60000:
        raise ConfigError(path, "neighbors.claim_probe_ms", "must be from 10 to 60000")
    announce = _typed(neighbors, "announce", bool, "neighbors.announce", path, True)
    unowned = _typed(neighbors, "last_writer_wins", list, "neighbors.last_writer_wins", path, [])
    for index, group_name in enumerate(unowned):
        if not isinstance(group_name, str) or not check_group_name(group_name):
            raise ConfigError(path, f"neighbors.last_writer_wins[{index}]", "must be a group name")
    fastpath = _table(data, "fastpath", {"enabled", "engine", "bpf_object"}, path)
    fastpath_enabled = _typed(fastpath, "enabled", bool, "fastpath.enabled", path, True)
    engine = _typed(fastpath, "engine", str, "fastpath.engine", path, "bpf")
    if engine not in FASTPATH_ENGINES:
        raise ConfigError(path, "fastpath.engine", 'must be "bpf", "nftables" or "off"')
    bpf_object = _typed(fastpath, "bpf_object", str, "fastpath.bpf_object", path, None)
    control = _table(data, "control", _CONTROL, path)
    control_socket = _typed(control, "socket", str, "control.socket", path, None)
    control_tcp = _typed(control, "tcp", str, "control.tcp", path, None)
    secret = _typed(control, "curve_secret_key", str, "control.curve_secret_key", path, None)
    authorized = _typed(
        control, "curve_authorized_keys", str, "control.curve_authorized_keys", path, None
    )
    if control_tcp is not None:
        if not control_tcp.startswith("tcp://"):
            raise ConfigError(path, "control.tcp", f"must be tcp://HOST:PORT, not {control_tcp!r}")
        if secret is None or authorized is None:
            raise ConfigError(
                path,
                "control.tcp",
                "TCP control needs CURVE: set control.curve_secret_key and "
                "control.curve_authorized_keys",
            )

    raw_groups = data.get("group", [])
    if not isinstance(raw_groups, list):
        raise ConfigError(path, "group", "must be an array of tables ([[group]])")
    groups: list[GroupConfig] = []
    seen_groups: set[str] = set()
    owner: dict[str, str] = {}
    for index, raw in enumerate(raw_groups):
        where = f"group[{index}]"
        if not isinstance(raw, dict):
            raise ConfigError(path, where, "must be a table")
        _only(raw, _GROUP, where, path)
        if "name" not in raw:
            raise ConfigError(path, f"{where}.name", "is required")
        name = _typed(raw, "name", str, f"{where}.name", path, "")
        status = check_group_name(name)
        if not status:
            raise ConfigError(path, f"{where}.name", status.message)
        if name in seen_groups:
            raise ConfigError(path, f"{where}.name", f"group {name} is defined twice")
        seen_groups.add(name)
        upstream = _typed(raw, "upstream", str, f"{where}.upstream", path, None)
        if upstream is not None and is_pattern(upstream):
            raise ConfigError(
                path, f"{where}.upstream", f"must be an exact interface name, not {upstream!r}"
            )
        members = _typed(raw, "members", list, f"{where}.members", path, [])
        names = ([(f"{where}.upstream", upstream)] if upstream is not None else []) + [
            (f"{where}.members[{i}]", m) for i, m in enumerate(members)
        ]
        for field_name, interface in names:
            if isinstance(interface, str) and is_pattern(interface):
                status = check_member_pattern(interface)
            else:
                status = check_interface_name(interface)
            if not status:
                raise ConfigError(path, field_name, status.message)
            if interface in owner:
                what = "pattern" if is_pattern(interface) else "interface"
                raise ConfigError(
                    path,
                    field_name,
                    f"{what} {interface} is already in group {owner[interface]}",
                )
            owner[interface] = name
        groups.append(GroupConfig(name, upstream, tuple(members)))
    return Config(
        nested=nested,
        loop_disable_seconds=float(loop_s),
        runtime_dir=Path(runtime_dir),
        state_dir=Path(state_dir),
        control_group=control_group,
        worker_zygote=worker_zygote,
        metrics_listen=listen,
        neighbor_capacity=capacity,
        neighbor_lifetime_seconds=float(lifetime),
        per_member_limit=per_member,
        claim_probe_ms=probe_ms,
        last_writer_wins=frozenset(unowned),
        announce=announce,
        fastpath_enabled=fastpath_enabled and engine != "off",
        fastpath_engine=engine,
        fastpath_bpf_object=Path(bpf_object) if bpf_object else None,
        control_socket=Path(control_socket) if control_socket else None,
        control_tcp=control_tcp,
        curve_secret_key=Path(secret) if secret else None,
        curve_authorized_keys=Path(authorized) if authorized else None,
        groups=tuple(groups),
        source=str(path),
    )


def _check_listen(listen: str, path: Path) -> None:
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(path, "metrics.listen", f"must be HOST:PORT, not {listen!r}")


def load_config(path: Path | str) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(path, "", "is not UTF-8 text") from None
    config = parse_config(text, path)
    if config.curve_secret_key is not None:
        load_curve_secret_key(config.curve_secret_key, path)
    if config.curve_authorized_keys is not None:
        load_curve_authorized_keys(config.curve_authorized_keys, path)
    return config


def _curve_key(value: bytes | None) -> bytes | None:
    """The z85 text of a CURVE key if it is one (40 characters for 32 bytes)."""
    if value is None or len(value) != 40:
        return None
    try:
        zmq.utils.z85.decode(value)
    except (ValueError, KeyError):  # z85 reports a bad character as a KeyError
        return None
    return value


def _read_certificate(key_file: Path) -> tuple[bytes | None, bytes | None]:
    """(public, secret) z85 keys of a zmq certificate file; OSError if unreadable.

    The format is ZeroMQ's ZPL certificate (what zmq.auth writes); parsed here so that
    every failure is an OSError with the OS's message or a missing key, never a traceback.
    """
    public = secret = None
    for line in key_file.read_bytes().splitlines():
        line = line.strip()
        key, sep, value = line.partition(b"=")
        if not sep:
            continue
        value = value.strip(b" \t'\"")
        if key.strip() == b"public-key":
            public = value
        elif key.strip() == b"secret-key":
            secret = value
    return public, secret


def load_curve_secret_key(key_file: Path, path: Path | str) -> tuple[bytes, bytes]:
    """The server's (public, secret) CURVE keys, or a ConfigError naming what is wrong."""
    where = "control.curve_secret_key"
    try:
        public, secret = _read_certificate(key_file)
    except OSError as exc:
        raise ConfigError(path, where, f"cannot read {key_file}: {exc.strerror or exc}") from None
    if secret is None:
        raise ConfigError(path, where, f"{key_file} has no secret key (a public key file?)")
    public, secret = _curve_key(public), _curve_key(secret)
    if public is None or secret is None:
        raise ConfigError(
            path, where, f"{key_file}: the public or secret key is not a 40-character z85 key"
        )
    return public, secret


def load_curve_authorized_keys(folder: Path, path: Path | str) -> set[bytes]:
    """The z85 public keys of the certificate files in `folder` (subfolders are skipped).

    A folder that is missing or holds an unusable file is an error, not an empty set: a
    daemon that silently authorizes no one looks like a network problem to its operator.
    """
    where = "control.curve_authorized_keys"
    try:
        entries = sorted(folder.iterdir())
    except NotADirectoryError:
        raise ConfigError(path, where, f"{folder} is not a folder") from None
    except OSError as exc:
        raise ConfigError(path, where, f"cannot read {folder}: {exc.strerror or exc}") from None
    keys = set()
    for entry in entries:
        if entry.is_dir():
            continue
        try:
            public, _secret = _read_certificate(entry)
        except OSError as exc:
            raise ConfigError(path, where, f"cannot read {entry}: {exc.strerror or exc}") from None
        key = _curve_key(public)
        if key is None:
            raise ConfigError(
                path, where, f"{entry} holds no usable public key (a 40-character z85 key)"
            )
        keys.add(key)
    return keys
