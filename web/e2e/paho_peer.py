"""A paho-mqtt peer for the browser tests, driven through stdin and stdout (one JSON object a line).

    python3 paho_peer.py sub HOST PORT FILTER QOS   prints {"ready": true} after the SUBACK,
                                                   then {"topic", "payload", "qos", "dup",
                                                   "retain"} for each message
    python3 paho_peer.py pub HOST PORT              reads {"topic", "payload", "qos", "retain"}
                                                   lines, publishes each, prints {"done": N}
                                                   when its QoS flow is complete

Both run until stdin closes.
"""

import json
import sys
import threading

import paho.mqtt.client as mqtt


def emit(value):
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()


def client(name):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv311)
    return c


def main():
    mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    connected = threading.Event()
    c = client(f"e2e-{mode}-{threading.get_native_id()}")
    c.on_connect = lambda *args: connected.set()
    if mode == "sub":
        topic_filter, qos = sys.argv[4], int(sys.argv[5])
        c.on_subscribe = lambda *args: emit({"ready": True})
        c.on_message = lambda _c, _u, m: emit(
            {
                "topic": m.topic,
                "payload": m.payload.decode("utf-8", "replace"),
                "qos": m.qos,
                "dup": bool(m.dup),
                "retain": bool(m.retain),
            }
        )
        c.on_connect = lambda cl, *args: cl.subscribe(topic_filter, qos)
    c.connect(host, port, keepalive=30)
    c.loop_start()
    if mode == "pub":
        if not connected.wait(10):
            emit({"error": "no CONNACK"})
            sys.exit(1)
        emit({"ready": True})
        for count, line in enumerate(sys.stdin, start=1):
            message = json.loads(line)
            info = c.publish(
                message["topic"],
                message["payload"],
                qos=message.get("qos", 0),
                retain=message.get("retain", False),
            )
            info.wait_for_publish(10)
            emit({"done": count})
    else:
        sys.stdin.read()
    c.disconnect()
    c.loop_stop()


if __name__ == "__main__":
    main()
