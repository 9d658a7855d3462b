"""A BPF map by its file descriptor: write, delete, and read back every entry.

ctypes over libbpf's low-level map calls.  Keys and values are the packed bytes of the
C structs (bpfpath.py packs them), so this module knows nothing of their meaning.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import os


class BpfError(OSError):
    """A libbpf call failed; the message names the call."""


@functools.cache
def _lib() -> ctypes.CDLL:
    lib = ctypes.CDLL(ctypes.util.find_library("bpf") or "libbpf.so.1", use_errno=True)
    lib.bpf_map_update_elem.argtypes = [
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_uint64,
    ]
    lib.bpf_map_delete_elem.argtypes = [ctypes.c_int, ctypes.c_void_p]
    lib.bpf_map_lookup_elem.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    lib.bpf_map_get_next_key.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    return lib


class BpfMap:
    def __init__(self, name: str, fd: int, key_size: int, value_size: int) -> None:
        self.name = name
        self.fd = fd
        self.key_size = key_size
        self.value_size = value_size

    def update(self, key: bytes, value: bytes) -> None:
        err = _lib().bpf_map_update_elem(self.fd, key, value, 0)
        if err:
            raise BpfError(-err, f"updating map {self.name}: {os.strerror(-err)}")

    def delete(self, key: bytes) -> bool:
        err = _lib().bpf_map_delete_elem(self.fd, key)
        if err == -errno.ENOENT:
            return False
        if err:
            raise BpfError(-err, f"deleting from map {self.name}: {os.strerror(-err)}")
        return True

    def lookup(self, key: bytes, value_size: int | None = None) -> bytes | None:
        """The value; `value_size` for per-CPU maps (the value size times the CPUs)."""
        out = ctypes.create_string_buffer(value_size or self.value_size)
        err = _lib().bpf_map_lookup_elem(self.fd, key, out)
        if err == -errno.ENOENT:
            return None
        if err:
            raise BpfError(-err, f"reading map {self.name}: {os.strerror(-err)}")
        return out.raw

    def list_keys(self) -> list[bytes]:
        found: list[bytes] = []
        current = None
        following = ctypes.create_string_buffer(self.key_size)
        while True:
            err = _lib().bpf_map_get_next_key(self.fd, current, following)
            if err == -errno.ENOENT:
                return found
            if err:
                raise BpfError(-err, f"listing map {self.name}: {os.strerror(-err)}")
            found.append(following.raw)
            current = ctypes.create_string_buffer(following.raw, self.key_size)

    def items(self) -> dict[bytes, bytes]:
        entries = {}
        for key in self.list_keys():
            value = self.lookup(key)
            if value is not None:  # deleted meanwhile
                entries[key] = value
        return entries
