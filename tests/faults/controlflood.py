"""Control-socket flood: N malformed requests and C concurrent clients, every reply checked.

Usage: controlflood.py SOCKET N CLIENTS.  Prints a summary; exits 1 if any request that
carried a readable id went unanswered or was answered without an error code.
"""

import random
import sys
import threading

import msgpack
import zmq


def malformed(rng: random.Random, request_id: int) -> tuple[bytes, bool]:
    """(bytes, whether a reply carrying request_id must come back)."""
    kind = rng.randrange(6)
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 200)), False
    if kind == 1:
        return msgpack.packb({"v": 1, "op": rng.choice([1, None, "nope"]), "id": request_id}), True
    if kind == 2:
        return msgpack.packb({"v": 7, "op": "status", "id": request_id}), True
    if kind == 3:
        return msgpack.packb(
            {"v": 1, "op": "bind", "id": request_id, "args": {"x": [1] * 500}}
        ), True
    if kind == 4:
        return b"\x91" * rng.randrange(100, 3000) + b"\xc0", False
    return msgpack.packb({"v": 1, "op": "status", "id": request_id, "args": "x" * 70_000}), True


def client(endpoint: str, count: int, seed: int, failures: list, answered: list) -> None:
    rng = random.Random(seed)
    context = zmq.Context.instance()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        for i in range(count):
            request_id = seed * 1_000_000 + i
            raw, expect = malformed(rng, request_id)
            if rng.random() < 0.1:
                sock.send_multipart([b"", raw, b"extra"])  # a multipart shape
                expect = False
            else:
                sock.send(raw)
            while sock.poll(5000 if expect else 0):
                reply = msgpack.unpackb(sock.recv_multipart()[-1], raw=False)
                if reply.get("ok") or not isinstance(reply.get("code"), int):
                    failures.append(f"bad reply {reply!r}")
                if reply.get("id") == request_id:
                    answered.append(1)
                    break
            else:
                if expect:
                    failures.append(f"no reply to request {request_id}")
    finally:
        sock.close(linger=0)


def main() -> int:
    path, total, clients = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    failures: list[str] = []
    answered: list[int] = []
    threads = [
        threading.Thread(
            target=client,
            args=(f"ipc://{path}", total // clients, seed + 1, failures, answered),
        )
        for seed in range(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    print(
        f"{total} malformed requests from {clients} clients: {len(answered)} answered with an"
        f" error code, {len(failures)} failures {failures[:3]}"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
