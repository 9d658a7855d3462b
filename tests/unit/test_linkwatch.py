"""LinkWatch's handling of the kernel's answers: interrupted dumps, errors, failed looks.

(The storm of real interfaces is in tests/netns/test_linkwatch_storm.py.)
"""

import socket
import struct
import types

import pytest

import portier.workers.linkwatch as linkwatch


def test_an_interrupted_dump_is_redone_and_a_failed_look_keeps_the_state():
    """collect_replies on the kernel's wire format; refresh's retries around it."""
    header = linkwatch._NLMSGHDR
    done = header.pack(header.size + 4, linkwatch.NLMSG_DONE, linkwatch.NLM_F_MULTI, 7, 0)
    interrupted = header.pack(
        header.size + 4,
        linkwatch.NLMSG_DONE,
        linkwatch.NLM_F_MULTI | linkwatch.NLM_F_DUMP_INTR,
        7,
        0,
    )
    assert linkwatch.collect_replies(iter([done + bytes(4)]), 7) == []
    with pytest.raises(linkwatch.DumpInterrupted):
        linkwatch.collect_replies(iter([interrupted + bytes(4)]), 7)
    error = header.pack(header.size + 4, linkwatch.NLMSG_ERROR, 0, 7, 0) + (-19).to_bytes(
        4, "little", signed=True
    )
    with pytest.raises(OSError) as err:
        linkwatch.collect_replies(iter([error]), 7)
    assert err.value.errno == 19
    # An answer to an earlier request is not this one's.
    assert (
        linkwatch.collect_replies(iter([error.replace(b"\x07", b"\x06", 1), done + bytes(4)]), 7)
        == []
    )


# The kernel's netlink header and flags (linux/netlink.h), written out independently.
NLMSGHDR = struct.Struct("=IHHII")
NLMSG_DONE = 3
NLM_F_MULTI = 0x2
NLM_F_DUMP_INTR = 0x10


class FaultyNetlink(socket.socket):
    """A real netlink socket whose answers to requests go wrong on cue: `faults` lists,
    per request answered, None (the kernel's answer), "timeout" (no answer) or
    "interrupted" (a dump cut short, flagged NLM_F_DUMP_INTR, as under a storm)."""

    faults: list[str | None] = []

    def sendto(self, *args):
        self._fault = self.faults.pop(0) if self.faults else None
        return super().sendto(*args)

    def recv(self, size, *args):
        fault = getattr(self, "_fault", None)
        data = super().recv(size, *args)
        if fault == "timeout":
            raise TimeoutError("timed out")
        _length, _kind, flags, seq, _pid = NLMSGHDR.unpack_from(data)
        if fault == "interrupted" and flags & NLM_F_MULTI:
            self._fault = None
            return NLMSGHDR.pack(20, NLMSG_DONE, NLM_F_MULTI | NLM_F_DUMP_INTR, seq, 0) + bytes(4)
        return data


@pytest.fixture
def faulty(monkeypatch):
    """LinkWatch's sockets, made FaultyNetlink."""
    module = types.SimpleNamespace(**{**vars(socket), "socket": FaultyNetlink})
    monkeypatch.setattr(linkwatch, "socket", module)
    FaultyNetlink.faults = []
    return FaultyNetlink.faults


def test_an_interrupted_dump_is_redone_not_taken_for_an_interface_gone(faulty):
    truth = linkwatch.LinkWatch("lo")
    truth.close()
    assert truth.state.ifindex == 1 and truth.state.addresses
    faulty.extend(["interrupted", "interrupted"])  # the first requests of the next look
    watch = linkwatch.LinkWatch("lo")
    try:
        assert watch.state == truth.state
        assert not getattr(watch, "pending", False)
    finally:
        watch.close()


def test_a_look_that_times_out_keeps_the_last_state_and_is_retried(faulty):
    watch = linkwatch.LinkWatch("lo")
    try:
        known = watch.state
        faulty.extend(["timeout"] * 10)
        assert watch.refresh(10.0) == known  # kept, not "gone", and nothing raised
        assert watch.pending and watch.counters["netlink_timeout"] == 1
        assert not watch.due(10.0) and watch.due(10.0 + linkwatch.RETRY_S)
        faulty.clear()
        assert watch.retry(11.0) is False and not watch.pending  # asked again: unchanged
        assert watch.state == known
    finally:
        watch.close()
