"""A peer for the interop tests, written with the Python `websockets` library (sync API).

    python3 python_peer.py client ws://127.0.0.1:PORT/path
        Connects with subprotocol `mqtt` offered, exchanges text, binary, fragmented and large
        messages and a ping with the server (which must echo), closes with 1000 "bye" and checks
        the server's close answer. Exits 0 and prints OK when everything matched.

    python3 python_peer.py server
        Serves one echo connection on 127.0.0.1 (any port, printed as `PORT n` on stdout),
        selecting subprotocol `mqtt` when offered; echoes every message, reports the close code
        and reason it received as `CLOSED code reason`, then exits.
"""

import sys
import threading

from websockets.exceptions import ConnectionClosedOK
from websockets.sync.client import connect
from websockets.sync.server import serve

TIMEOUT = 10


def check(condition, what):
    if not condition:
        print(f"FAILED: {what}", flush=True)
        sys.exit(1)


def run_client(url):
    with connect(
        url,
        subprotocols=["mqtt", "chat"],
        compression=None,
        max_size=None,
        open_timeout=TIMEOUT,
        close_timeout=TIMEOUT,
    ) as ws:
        check(ws.subprotocol == "mqtt", f"subprotocol {ws.subprotocol!r}")

        for text in ["", "hello", "κόσμε \U0001f310 " * 50]:
            ws.send(text)
            echoed = ws.recv(TIMEOUT)
            check(echoed == text, f"text echo of {len(text)} chars")

        for data in [b"", bytes(range(256)), bytes(i % 251 for i in range(1 << 20))]:
            ws.send(data)
            echoed = ws.recv(TIMEOUT)
            check(echoed == data, f"binary echo of {len(data)} bytes")

        # Fragmented messages: each item of the iterable goes out as one frame.
        ws.send(["frag", "men", "ted \u00e9"])
        check(ws.recv(TIMEOUT) == "fragmented \u00e9", "fragmented text echo")
        ws.send([b"\x00\x01", b"", b"\x02" * 70000])
        check(ws.recv(TIMEOUT) == b"\x00\x01" + b"\x02" * 70000, "fragmented binary echo")

        pong = ws.ping(b"are you there")
        check(pong.wait(TIMEOUT), "pong for a ping")

        ws.close(1000, "bye")
        check(ws.close_code == 1000, f"close code from the server: {ws.close_code}")
    print("OK", flush=True)


def run_server():
    done = threading.Event()
    result = {}

    def handler(ws):
        try:
            for message in ws:
                ws.send(message)
        except ConnectionClosedOK:
            pass
        finally:
            result["close"] = (ws.close_code, ws.close_reason)
            done.set()

    with serve(
        handler,
        "127.0.0.1",
        0,
        subprotocols=["mqtt"],
        compression=None,
        max_size=None,
    ) as server:
        port = server.socket.getsockname()[1]
        print(f"PORT {port}", flush=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        check(done.wait(60), "no connection finished within 60 s")
        code, reason = result["close"]
        print(f"CLOSED {code} {reason}", flush=True)
        server.shutdown()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "client":
        run_client(sys.argv[2])
    elif len(sys.argv) == 2 and sys.argv[1] == "server":
        run_server()
    else:
        print(__doc__)
        sys.exit(2)
