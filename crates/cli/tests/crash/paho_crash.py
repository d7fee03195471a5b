#!/usr/bin/env python3
"""paho-mqtt (Python) clients for the broker crash test (crates/cli/tests/crash.rs).

    paho_crash.py --port PORT --run RUN

Sets a retained message on crash/RUN/retained, connects two persistent subscribers to
crash/RUN/p/+ at QoS 2 (MQTT 5.0 and 3.1.1) and four persistent publishers (QoS 1 and 2, MQTT
3.1.1 and 5.0; two of them publish retained), prints `ready`, and publishes NAME:1, NAME:2...
on crash/RUN/p/NAME while the test kills and restarts the broker. paho reconnects by itself
and resumes its sessions; what it reports acknowledged is what its on_publish callback was
called for with a success reason code (after PUBACK, or PUBCOMP).

When a line `stop` comes on stdin, the publishers stop, wait for the acknowledgements of what
they sent, the subscribers wait for every acknowledged message, and a new subscriber collects
the retained messages under crash/RUN/. Then it prints its report, one record a line:

    publisher NAME QOS RETAIN PUBLISHED NOT_ACKED ACKED_SEQS SESSION_PRESENT_FLAGS
    subscriber NAME SESSION_PRESENT_FLAGS
    received SUBSCRIBER PUBLISHER SEQ QOS        (in the order received)
    retained TOPIC PAYLOAD
    worked-around PUBLISHER KEPT_PUBREL HELD_IN_HANDSHAKE   (see PahoClient)
    done

(lists comma-separated, `-` when empty; the Session Present flags are those of each reconnect,
1 or 0). The test checks the report. Every wait is bounded; a failure prints a message on
stderr and exits with status 1.
"""

import argparse
import logging
import os
import queue
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

# Unacknowledged messages one publisher has at once (paho's own limit is 20).
WINDOW = 10
# The pause between two publishes of one publisher.
PACE = 0.002
SESSION_EXPIRY = 3600
# How long the acknowledgements, and then the deliveries, may take after `stop`.
SETTLE = 30.0
# How long a connection or a subscription may take.
TIMEOUT = 10.0

# name, MQTT version, QoS, retain
PUBLISHERS = [
    ("p0", "311", 1, True),
    ("p1", "5", 1, False),
    ("p2", "311", 2, False),
    ("p3", "5", 2, True),
]
# name, MQTT version
SUBSCRIBERS = [("s5", "5"), ("s311", "311")]


class Failure(Exception):
    """The clients could not run to the end."""


class PahoClient(mqtt.Client):
    """paho's client with two bugs worked around, so that the test checks the broker.

    - paho-mqtt 2.1.0 prepares a reconnect attempt by resetting its outgoing messages
      (`_messages_reconnect_reset_out`): a QoS 2 message whose PUBREL was sent becomes "resend
      PUBREL", but one already in that state becomes "resend PUBLISH", DUP 0. So when an
      attempt fails (the broker is still down) before one succeeds, the message is published
      again after its PUBREL (against MQTT-4.3.3: the sender MUST NOT re-send the PUBLISH once
      it has sent the corresponding PUBREL), under an identifier the broker has released, and
      a subscriber gets it twice. This puts such a message back in the state the reset maps to
      "resend PUBREL" before paho's reset runs.
    - paho sends a message published while its CONNECT waits for CONNACK at once, and resends
      the unacknowledged ones of the previous connection on CONNACK: the new message overtakes
      them, and reaches subscribers out of order. This keeps it until CONNACK (as a message
      published while disconnected is kept), and has the resends on CONNACK queued before any
      publish from another thread.

    Each counts how often it mattered, for the test's output.
    """

    kept_pubrel = 0
    held_in_handshake = 0

    def _messages_reconnect_reset_out(self):
        with self._out_message_mutex:
            for message in self._out_messages.values():
                if message.state == mqtt.mqtt_ms_resend_pubrel:
                    message.state = mqtt.mqtt_ms_wait_for_pubcomp
                    self.kept_pubrel += 1
        super()._messages_reconnect_reset_out()

    def _send_publish(self, *args, **kwargs):
        if self._sock is not None and not self.is_connected():
            # paho's publish() then keeps the message for the CONNACK, in order.
            self.held_in_handshake += 1
            return mqtt.MQTT_ERR_NO_CONN
        return super()._send_publish(*args, **kwargs)

    def _handle_connack(self):
        # publish() takes this lock (an RLock, which paho takes again inside).
        with self._out_message_mutex:
            return super()._handle_connack()


class Peer:
    """A paho client with a persistent session that reconnects by itself, soon."""

    def __init__(self, name, version, args):
        self.name = name
        self.version = version
        self.port = args.port
        self.client = PahoClient(
            CallbackAPIVersion.VERSION2,
            client_id=f"crash-{name}-{args.run}",
            protocol=mqtt.MQTTv5 if version == "5" else mqtt.MQTTv311,
            clean_session=None if version == "5" else False,
        )
        self.client.reconnect_delay_set(min_delay=0.01, max_delay=0.1)
        if os.environ.get("RALLYMQ_CRASH_PAHO_LOG"):
            self.client.enable_logger(logging.getLogger(name))
        self.connacks = queue.Queue()
        # Session Present of every CONNACK, the first connection's included.
        self.session_present = []
        self.client.on_connect = self._on_connect

    def _on_connect(self, _client, _userdata, flags, reason_code, _properties):
        if reason_code.is_failure:
            print(f"{self.name}: CONNACK {reason_code}", file=sys.stderr, flush=True)
            return
        self.session_present.append(bool(flags.session_present))
        self.connacks.put(bool(flags.session_present))

    def connect(self):
        if self.version == "5":
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = SESSION_EXPIRY
            self.client.connect(
                "127.0.0.1", self.port, keepalive=30, clean_start=False, properties=properties
            )
        else:
            self.client.connect("127.0.0.1", self.port, keepalive=30)
        self.client.loop_start()
        try:
            present = self.connacks.get(timeout=TIMEOUT)
        except queue.Empty:
            raise Failure(f"{self.name}: no CONNACK") from None
        if present:
            raise Failure(f"{self.name}: a new client id found a session")

    def reconnects(self):
        """Session Present of each reconnect, as the report writes it."""
        return ",".join("1" if p else "0" for p in self.session_present[1:]) or "-"

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


class Subscriber(Peer):
    def __init__(self, name, version, args):
        super().__init__(name, version, args)
        self.lock = threading.Lock()
        # (publisher, seq, qos) in the order received
        self.received = []
        self.subacks = queue.Queue()
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe

    def _on_message(self, _client, _userdata, message):
        publisher, _, seq = message.payload.decode().partition(":")
        with self.lock:
            self.received.append((publisher, int(seq), message.qos))

    def _on_subscribe(self, _client, _userdata, _mid, reason_codes, _properties):
        self.subacks.put([int(code.value) for code in reason_codes])

    def subscribe(self, topic):
        self.client.subscribe(topic, qos=2)
        try:
            granted = self.subacks.get(timeout=TIMEOUT)
        except queue.Empty:
            raise Failure(f"{self.name}: no SUBACK") from None
        if granted != [2]:
            raise Failure(f"{self.name}: SUBACK {granted}")

    def has(self, publisher, seqs):
        with self.lock:
            got = {seq for name, seq, _ in self.received if name == publisher}
        return all(seq in got for seq in seqs)


class Publisher(Peer):
    def __init__(self, name, version, qos, retain, args):
        super().__init__(name, version, args)
        self.qos = qos
        self.retain = retain
        self.topic = f"crash/{args.run}/p/{name}"
        # (mid, success) from on_publish, which runs on paho's thread holding its own lock:
        # handled on the publishing thread, which alone knows which SEQ a mid is.
        self.acks = queue.Queue()
        self.waiting = {}  # mid -> seq, not yet acknowledged
        self.published = 0
        self.acked = []
        self.not_acked = 0
        self.error = None
        self.client.on_publish = self._on_publish

    def _on_publish(self, _client, _userdata, mid, reason_code, _properties):
        # A QoS 2 PUBCOMP with 0x92 (Packet Identifier Not Found) follows a PUBREC that took
        # the message: the broker released the identifier and answered PUBREL, a kill kept the
        # PUBCOMP from arriving, and the resent PUBREL found the identifier gone, as it may
        # (MQTT 5 section 4.3.3). paho sends PUBREL even after a failed PUBREC, which would
        # get 0x92 too; the broker fails PUBREC only when its store fails, which this test
        # does not make happen (and a message counted so would show as lost, not pass).
        accepted = not reason_code.is_failure or (self.qos == 2 and reason_code.value == 0x92)
        self.acks.put((mid, accepted))

    def _take_ack(self, timeout):
        try:
            mid, success = self.acks.get(timeout=timeout)
        except queue.Empty:
            return False
        seq = self.waiting.pop(mid, None)
        if seq is None:
            raise Failure(f"{self.name}: on_publish for mid {mid}, which is not waiting")
        if success:
            self.acked.append(seq)
        else:
            self.not_acked += 1
        return True

    def run(self, stop):
        try:
            while not stop.is_set():
                while self._take_ack(0):
                    pass
                if len(self.waiting) >= WINDOW:
                    self._take_ack(0.1)
                    continue
                seq = self.published + 1
                info = self.client.publish(
                    self.topic, f"{self.name}:{seq}", qos=self.qos, retain=self.retain
                )
                # Not connected: paho keeps the message and sends it on the next connection.
                if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                    raise Failure(f"{self.name}: publish {seq}: {mqtt.error_string(info.rc)}")
                self.waiting[info.mid] = seq
                self.published = seq
                time.sleep(PACE)
            deadline = time.monotonic() + SETTLE
            while self.waiting and time.monotonic() < deadline:
                self._take_ack(0.1)
            self.not_acked += len(self.waiting)
        except Exception as error:  # reported by the main thread
            self.error = error


def retained_now(args, expected):
    """The retained messages under crash/RUN/ a new (clean) subscriber gets."""
    found = {}
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)

    def on_message(_client, _userdata, message):
        if message.retain:
            found[message.topic] = message.payload.decode()
            if len(found) >= expected:
                done.set()

    client.on_message = on_message
    client.on_connect = lambda c, *_: c.subscribe(f"crash/{args.run}/#", qos=1)
    client.connect("127.0.0.1", args.port)
    client.loop_start()
    done.wait(5.0)
    client.disconnect()
    client.loop_stop()
    return found


def set_retained(args):
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", args.port)
    client.loop_start()
    info = client.publish(f"crash/{args.run}/retained", f"kept-{args.run}", qos=1, retain=True)
    info.wait_for_publish(TIMEOUT)
    if not info.is_published():
        raise Failure("the retained message was not acknowledged")
    client.disconnect()
    client.loop_stop()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--run", required=True)
    args = parser.parse_args()
    if os.environ.get("RALLYMQ_CRASH_PAHO_LOG"):
        logging.basicConfig(
            filename=os.environ["RALLYMQ_CRASH_PAHO_LOG"],
            level=logging.DEBUG,
            format="%(asctime)s.%(msecs)03d %(name)s %(message)s",
            datefmt="%H:%M:%S",
        )

    set_retained(args)
    subscribers = [Subscriber(name, version, args) for name, version in SUBSCRIBERS]
    for subscriber in subscribers:
        subscriber.connect()
        subscriber.subscribe(f"crash/{args.run}/p/+")
    publishers = [Publisher(*spec, args) for spec in PUBLISHERS]
    for publisher in publishers:
        publisher.connect()
    stop = threading.Event()
    threads = [threading.Thread(target=p.run, args=(stop,), daemon=True) for p in publishers]
    for thread in threads:
        thread.start()
    print("ready", flush=True)

    # The test writes `stop` once it has killed and restarted the broker enough; an ended
    # stdin (the test is gone) stops too.
    sys.stdin.readline()
    stop.set()
    for thread in threads:
        thread.join(SETTLE + 5)
    for publisher in publishers:
        if publisher.error is not None:
            raise publisher.error
    deadline = time.monotonic() + SETTLE
    while time.monotonic() < deadline and not all(
        s.has(p.name, p.acked) for s in subscribers for p in publishers
    ):
        time.sleep(0.05)
    # Late duplicates, if any, are part of what is checked.
    time.sleep(0.3)
    for peer in subscribers + publishers:
        peer.close()
    retained = retained_now(args, 1 + sum(1 for p in publishers if p.retain))

    lines = []
    for p in publishers:
        acked = ",".join(str(seq) for seq in p.acked) or "-"
        lines.append(
            f"publisher {p.name} {p.qos} {int(p.retain)} {p.published} {p.not_acked} {acked} "
            f"{p.reconnects()}"
        )
    for s in subscribers:
        lines.append(f"subscriber {s.name} {s.reconnects()}")
        with s.lock:
            lines.extend(f"received {s.name} {p} {seq} {qos}" for p, seq, qos in s.received)
    lines.extend(f"retained {topic} {payload}" for topic, payload in retained.items())
    lines.extend(
        f"worked-around {p.name} {p.client.kept_pubrel} {p.client.held_in_handshake}"
        for p in publishers
    )
    lines.append("done")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    try:
        main()
    except Failure as failure:
        print(f"paho_crash.py: {failure}", file=sys.stderr, flush=True)
        sys.exit(1)
