"""ctypes over libbpf: open and load the tc object, fill its maps, test-run it.

Only the few libbpf calls the BPF data path needs; no BCC.  The object file is
compiled from supervisor/bpf/portier_tc.c at install time (see compile_object).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import subprocess
from pathlib import Path

from portier.supervisor.bpfmaps import BpfError, BpfMap

SOURCE = Path(__file__).parent / "bpf" / "portier_tc.c"
TC_ACT_OK = 0
TC_ACT_REDIRECT = 7


class _TestRunOpts(ctypes.Structure):
    # struct bpf_test_run_opts from <bpf/bpf.h>
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


def _lib() -> ctypes.CDLL:
    name = ctypes.util.find_library("bpf") or "libbpf.so.1"
    lib = ctypes.CDLL(name, use_errno=True)
    lib.bpf_object__open_file.restype = ctypes.c_void_p
    lib.bpf_object__open_file.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
    lib.bpf_object__load.argtypes = [ctypes.c_void_p]
    lib.bpf_object__close.argtypes = [ctypes.c_void_p]
    lib.bpf_object__find_program_by_name.restype = ctypes.c_void_p
    lib.bpf_object__find_program_by_name.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.bpf_program__fd.argtypes = [ctypes.c_void_p]
    lib.bpf_object__find_map_by_name.restype = ctypes.c_void_p
    lib.bpf_object__find_map_by_name.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.bpf_map__fd.argtypes = [ctypes.c_void_p]
    lib.bpf_prog_test_run_opts.argtypes = [ctypes.c_int, ctypes.POINTER(_TestRunOpts)]
    return lib


def compile_object(out: Path, clang: str = "clang") -> Path:
    """Compile the tc program; raises CalledProcessError with clang's message."""
    subprocess.run(
        [
            clang,
            "-O2",
            "-g",
            "-target",
            "bpf",
            "-I/usr/include/x86_64-linux-gnu",
            "-c",
            str(SOURCE),
            "-o",
            str(out),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return out


class TcObject:
    """A loaded portier_tc object: program fd and map fds."""

    def __init__(self, path: Path) -> None:
        self._lib = _lib()
        obj = self._lib.bpf_object__open_file(str(path).encode(), None)
        if not obj:
            raise BpfError(ctypes.get_errno(), f"bpf_object__open_file({path})")
        self._obj = obj
        err = self._lib.bpf_object__load(obj)
        if err:
            self.close()
            raise BpfError(-err, "bpf_object__load")
        prog = self._lib.bpf_object__find_program_by_name(obj, b"portier_ingress")
        self.prog_fd = int(self._lib.bpf_program__fd(prog))

    def map_fd(self, name: str) -> int:
        m = self._lib.bpf_object__find_map_by_name(self._obj, name.encode())
        if not m:
            raise BpfError(2, f"no map {name}")
        return int(self._lib.bpf_map__fd(m))

    def update(self, name: str, key: bytes, value: bytes) -> None:
        BpfMap(name, self.map_fd(name), len(key), len(value)).update(key, value)

    def delete(self, name: str, key: bytes) -> None:
        BpfMap(name, self.map_fd(name), len(key), 0).delete(key)

    def test_run(
        self,
        frame: bytes,
        ingress_ifindex: int,
        *,
        ifindex: int = 0,
        gso_size: int = 0,
        gso_segs: int = 0,
    ) -> tuple[int, bytes]:
        """Run the program on one frame (BPF_PROG_TEST_RUN): verdict and bytes out.

        `ifindex` puts the skb on that device of the caller's network namespace (0: the
        kernel's default, loopback), so that a clone the program redirects really goes
        out there; `gso_size`/`gso_segs` make it look like a GRO super-packet.
        """
        inbuf = ctypes.create_string_buffer(frame, len(frame))
        out = ctypes.create_string_buffer(len(frame) + 256)
        ctx = (ctypes.c_uint32 * 48)()  # struct __sk_buff, zeroed
        ctx[9] = ingress_ifindex  # __sk_buff.ingress_ifindex (offset 36)
        ctx[10] = ifindex  # __sk_buff.ifindex (offset 40)
        ctx[41] = gso_segs  # __sk_buff.gso_segs (offset 164)
        ctx[44] = gso_size  # __sk_buff.gso_size (offset 176)
        opts = _TestRunOpts(
            sz=ctypes.sizeof(_TestRunOpts),
            data_in=ctypes.cast(inbuf, ctypes.c_void_p),
            data_out=ctypes.cast(out, ctypes.c_void_p),
            data_size_in=len(frame),
            data_size_out=len(out),
            ctx_in=ctypes.cast(ctx, ctypes.c_void_p),
            ctx_size_in=ctypes.sizeof(ctx),
            repeat=1,
        )
        err = self._lib.bpf_prog_test_run_opts(self.prog_fd, ctypes.byref(opts))
        if err:
            raise BpfError(-err, "bpf_prog_test_run_opts")
        return int(opts.retval), out.raw[: opts.data_size_out]

    def close(self) -> None:
        if self._obj:
            self._lib.bpf_object__close(self._obj)
            self._obj = None
