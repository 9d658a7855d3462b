"""The tc side of the BPF data path: our filter on an interface's clsact ingress hook.

ctypes over libbpf's tc API (bpf_tc_hook_create, bpf_tc_attach, bpf_tc_detach,
bpf_tc_query).  Portier's filter always has the same handle and priority, so a run can
find and remove what a crashed run left, and never touches anyone else's filters.  The
clsact qdisc is created when missing and left in place afterwards: other tools may have
filters on it, and an empty clsact costs nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
from collections.abc import Iterator

from portier.supervisor.bpfmaps import BpfError

BPF_TC_INGRESS = 1
BPF_TC_F_REPLACE = 1
HANDLE = 0x5054  # "PT"
PRIORITY = 0x5054


class _Hook(ctypes.Structure):
    # struct bpf_tc_hook from <bpf/libbpf.h>
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("ifindex", ctypes.c_int),
        ("attach_point", ctypes.c_int),
        ("parent", ctypes.c_uint32),
    ]


class _Opts(ctypes.Structure):
    # struct bpf_tc_opts from <bpf/libbpf.h>
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("prog_fd", ctypes.c_int),
        ("flags", ctypes.c_uint32),
        ("prog_id", ctypes.c_uint32),
        ("handle", ctypes.c_uint32),
        ("priority", ctypes.c_uint32),
    ]


@functools.cache
def _lib() -> ctypes.CDLL:
    lib = ctypes.CDLL(ctypes.util.find_library("bpf") or "libbpf.so.1", use_errno=True)
    lib.libbpf_set_print.restype = ctypes.c_void_p
    lib.libbpf_set_print.argtypes = [ctypes.c_void_p]
    for name in ("bpf_tc_hook_create", "bpf_tc_attach", "bpf_tc_detach", "bpf_tc_query"):
        function = getattr(lib, name)
        function.restype = ctypes.c_int
        function.argtypes = (
            [ctypes.POINTER(_Hook)]
            if name == "bpf_tc_hook_create"
            else [ctypes.POINTER(_Hook), ctypes.POINTER(_Opts)]
        )
    return lib


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """libbpf prints the kernel's refusal to stderr; a detach or query on an interface
    without our filter (most of them, when a start sweeps them all) expects one."""
    previous = _lib().libbpf_set_print(None)
    try:
        yield
    finally:
        _lib().libbpf_set_print(previous)


def _hook(ifindex: int) -> _Hook:
    return _Hook(sz=ctypes.sizeof(_Hook), ifindex=ifindex, attach_point=BPF_TC_INGRESS)


def _ours(prog_fd: int = 0, flags: int = 0) -> _Opts:
    return _Opts(
        sz=ctypes.sizeof(_Opts), prog_fd=prog_fd, flags=flags, handle=HANDLE, priority=PRIORITY
    )


def attach(ifindex: int, prog_fd: int) -> int:
    """Put the program on the interface's ingress (replacing ours if there); its id."""
    hook = _hook(ifindex)
    err = _lib().bpf_tc_hook_create(ctypes.byref(hook))
    if err and err != -errno.EEXIST:
        raise BpfError(-err, f"bpf_tc_hook_create(ifindex {ifindex})")
    opts = _ours(prog_fd, BPF_TC_F_REPLACE)
    err = _lib().bpf_tc_attach(ctypes.byref(hook), ctypes.byref(opts))
    if err:
        raise BpfError(-err, f"bpf_tc_attach(ifindex {ifindex})")
    return int(opts.prog_id)


def detach(ifindex: int) -> bool:
    """Take our filter off the interface; False when it was not there (or no interface)."""
    hook, opts = _hook(ifindex), _ours()
    with _quiet():
        err = _lib().bpf_tc_detach(ctypes.byref(hook), ctypes.byref(opts))
    if err in (-errno.ENOENT, -errno.ENODEV, -errno.EINVAL):
        return False  # not attached, no such interface, or no clsact qdisc at all
    if err:
        raise BpfError(-err, f"bpf_tc_detach(ifindex {ifindex})")
    return True


def attached(ifindex: int) -> int | None:
    """The id of the program in our filter on the interface, None when there is none."""
    hook, opts = _hook(ifindex), _ours()
    with _quiet():
        err = _lib().bpf_tc_query(ctypes.byref(hook), ctypes.byref(opts))
    if err:
        return None
    return int(opts.prog_id)
