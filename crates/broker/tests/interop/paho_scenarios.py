#!/usr/bin/env python3
"""Interop scenarios run with paho-mqtt (Python) against a broker: ours or Mosquitto.

    paho_scenarios.py SCENARIO --port PORT [--transport tcp|websockets] [--version 311|5]
    paho_scenarios.py SCENARIO --ports A,B,C [...]

With --ports (the nodes of a cluster), each new client takes the next of the ports in turn, so
that a scenario's publishers and subscribers, and a client and its later reconnections, are on
different nodes.

Runs one scenario and prints what it observed as one line of JSON (sorted keys, no spaces), so
that the caller can compare it with the expected outcome and with Mosquitto's. Every wait is
bounded; on a failure (timeout, refused connection, a peer error) it prints a clear message to
stderr and exits with status 1. Topics and client ids carry a random run id, so scenarios can
share a broker.
"""

import argparse
import itertools
import json
import queue
import socket
import sys
import threading
import time
import uuid

import hashlib

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

# How long any one wait may take.
TIMEOUT = 5.0
# How long to keep listening for messages that must not come.
QUIET = 0.4


class Failure(Exception):
    """The scenario could not run to its end."""


class Peer:
    """One paho client driven synchronously: every step waits, bounded, for its answer."""

    def __init__(self, args, name, client_id=None, clean=True, manual_ack=False):
        self.args = args
        self.v5 = args.version == "5"
        self.name = name
        self.client_id = f"{name}-{args.run}" if client_id is None else client_id
        self.port = take_port(args)
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol={"31": mqtt.MQTTv31, "311": mqtt.MQTTv311, "5": mqtt.MQTTv5}[args.version],
            transport=args.transport,
            clean_session=None if self.v5 else clean,
            reconnect_on_failure=False,
            manual_ack=manual_ack,
        )
        if args.transport == "websockets":
            self.client.ws_set_options(path=args.path)
        self.messages = queue.Queue()
        self.connacks = queue.Queue()
        self.subacks = queue.Queue()
        self.disconnected = threading.Event()
        self.disconnect_reason = None
        self.connack_properties = None
        # The broker's topic aliases on this connection, and how many PUBLISHes set one
        # (topic and alias) or stood on one alone (empty topic).
        self.aliases = {}
        self.alias_use = {"set": 0, "alone": 0, "highest": 0}
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_disconnect = self._on_disconnect

    def _on_connect(self, _client, _userdata, flags, reason_code, properties):
        self.connack_properties = properties
        self.aliases = {}  # aliases live for one connection (MQTT-3.3.2-7)
        self.connacks.put((bool(flags.session_present), reason_code))

    def _on_disconnect(self, _client, _userdata, _flags, reason_code, _properties):
        self.disconnect_reason = reason_code.value
        self.disconnected.set()

    def _on_message(self, _client, _userdata, message):
        """Resolves the broker's topic alias: paho 2.1 hands a PUBLISH over as it came, with
        an empty topic where the alias alone stands for it."""
        alias = getattr(getattr(message, "properties", None), "TopicAlias", None)
        if alias is not None:
            self.alias_use["highest"] = max(self.alias_use["highest"], alias)
            if message.topic:
                self.aliases[alias] = message.topic
                self.alias_use["set"] += 1
            else:
                self.alias_use["alone"] += 1
                message.topic = self.aliases.get(alias, f"<unknown alias {alias}>").encode()
        self.messages.put(message)

    def _on_subscribe(self, _client, _userdata, mid, reason_codes, _properties):
        self.subacks.put((mid, [code.value for code in reason_codes]))

    def connect(self, clean=True, expiry=None, will=None, loop=True, will_delay=None,
                keepalive=30, **connect_properties):
        """Connects and waits for CONNACK; returns Session Present."""
        if will is not None:
            topic, payload, qos = will
            will_properties = None
            if will_delay is not None:
                will_properties = Properties(PacketTypes.WILLMESSAGE)
                will_properties.WillDelayInterval = will_delay
            self.client.will_set(topic, payload, qos, properties=will_properties)
        kwargs = {}
        if self.v5:
            properties = Properties(PacketTypes.CONNECT)
            if expiry is not None:
                properties.SessionExpiryInterval = expiry
            for name, value in connect_properties.items():
                setattr(properties, name, value)
            kwargs = {"clean_start": clean, "properties": properties}
        try:
            self.client.connect(self.args.host, self.port, keepalive=keepalive, **kwargs)
        except OSError as error:
            raise Failure(f"{self.name}: connect to {self.args.host}:{self.port}: {error}")
        if loop:
            self.client.loop_start()
            session_present, code = get(self.connacks, f"{self.name}: CONNACK")
        else:
            # Driven by hand, so nothing reconnects once the socket is killed.
            deadline = time.monotonic() + TIMEOUT
            while self.connacks.empty():
                if time.monotonic() > deadline:
                    raise Failure(f"{self.name}: no CONNACK within {TIMEOUT}s")
                self.client.loop(0.05)
            session_present, code = self.connacks.get()
        if code.is_failure:
            raise Failure(f"{self.name}: connection refused: {code}")
        return session_present

    def subscribe(self, topic, qos=0, options=None, properties=None):
        """Subscribes and waits for SUBACK; returns the granted QoS (or reason code)."""
        if options is not None:
            result, mid = self.client.subscribe(topic, options=options, properties=properties)
        else:
            result, mid = self.client.subscribe(topic, qos, properties=properties)
        if result != mqtt.MQTT_ERR_SUCCESS:
            raise Failure(f"{self.name}: subscribe {topic}: {mqtt.error_string(result)}")
        got_mid, codes = get(self.subacks, f"{self.name}: SUBACK for {topic}")
        if got_mid != mid:
            raise Failure(f"{self.name}: SUBACK for packet {got_mid}, expected {mid}")
        return codes[0]

    def publish(self, topic, payload, qos=0, retain=False, properties=None):
        """Publishes and waits until the flow completes (PUBACK, PUBCOMP, or written)."""
        info = self.client.publish(topic, payload, qos, retain, properties)
        info.wait_for_publish(TIMEOUT)
        if not info.is_published():
            raise Failure(f"{self.name}: publish to {topic!r} at QoS {qos} not completed")

    def receive(self, count, what):
        """The next `count` messages, each waited for at most TIMEOUT."""
        return [describe(get(self.messages, f"{self.name}: {what}")) for _ in range(count)]

    def receive_up_to(self, count):
        """The next `count` messages, or those that come, each waited for at most TIMEOUT: for
        messages whose absence is an outcome to report (a cluster may lose a QoS 0 message
        sent right after SUBACK) rather than a failure to run."""
        received = []
        for _ in range(count):
            try:
                received.append(describe(self.messages.get(timeout=TIMEOUT)))
            except queue.Empty:
                break
        return received

    def receive_until(self, payload, what):
        """Messages up to and including the one with `payload`."""
        received = []
        while True:
            message = describe(get(self.messages, f"{self.name}: {what}"))
            received.append(message)
            if message["payload"] == payload:
                return received

    def drain(self):
        """Messages that arrive within QUIET: what must not have come."""
        time.sleep(QUIET)
        extra = []
        while not self.messages.empty():
            extra.append(describe(self.messages.get()))
        return extra

    def disconnect(self, reason=None):
        if self.v5 and reason is not None:
            self.client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, reason))
        else:
            self.client.disconnect()
        if not self.disconnected.wait(TIMEOUT):
            raise Failure(f"{self.name}: disconnect not completed")
        self.client.loop_stop()

    def kill(self):
        """Ends the network connection without DISCONNECT (an abnormal disconnect)."""
        sock = self.client.socket()
        raw = getattr(sock, "_socket", sock)  # the TCP socket under paho's WebSocket wrapper
        try:
            raw.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        raw.close()


def take_port(args):
    """The port a new client connects to: --port, or with --ports the next one in turn."""
    if args.port_cycle is None:
        return args.port
    return next(args.port_cycle)


def get(q, what):
    try:
        return q.get(timeout=TIMEOUT)
    except queue.Empty:
        raise Failure(f"{what}: nothing within {TIMEOUT}s") from None


def describe(message):
    out = {
        "topic": message.topic,
        "payload": message.payload.decode("utf-8", "replace"),
        "qos": message.qos,
        "retain": bool(message.retain),
    }
    if message.dup:
        out["dup"] = True
    properties = getattr(message, "properties", None)
    user = getattr(properties, "UserProperty", None) if properties is not None else None
    if user:
        out["user"] = [list(pair) for pair in user]
    for name, key in (("ResponseTopic", "response_topic"), ("ContentType", "content_type"),
                      ("PayloadFormatIndicator", "payload_format")):
        value = getattr(properties, name, None)
        if value is not None:
            out[key] = value
    correlation = getattr(properties, "CorrelationData", None)
    if correlation is not None:
        out["correlation"] = correlation.hex()
    identifiers = getattr(properties, "SubscriptionIdentifier", None)
    if identifiers:
        out["subscription_ids"] = sorted(identifiers)
    expiry = getattr(properties, "MessageExpiryInterval", None)
    if expiry is not None:
        out["expiry"] = expiry
    if len(message.payload) > 1024:
        out["payload"] = f"{len(message.payload)} bytes, sha256 {hashlib.sha256(message.payload).hexdigest()[:16]}"
    return out


def relative(messages, prefix):
    for message in messages:
        if message["topic"].startswith(prefix):
            message["topic"] = message["topic"][len(prefix):]
    return messages


def scenario_qos(args):
    """QoS 0, 1 and 2 end to end, downgraded to each subscription's granted QoS."""
    prefix = f"interop/{args.run}/qos/"
    high = Peer(args, "sub-qos2")
    low = Peer(args, "sub-qos1")
    publisher = Peer(args, "pub")
    for peer in (high, low, publisher):
        peer.connect()
    granted = [high.subscribe(prefix + "#", 2), low.subscribe(prefix + "#", 1)]
    for qos in (0, 1, 2):
        publisher.publish(f"{prefix}{qos}", f"q{qos}", qos)
    result = {"granted": granted}
    for key, peer in (("sub_qos2", high), ("sub_qos1", low)):
        got = peer.receive_up_to(3) + peer.drain()
        result[key] = sorted(relative(got, prefix), key=lambda m: m["topic"])
    for peer in (high, low, publisher):
        peer.disconnect()
    return result


def scenario_retained(args):
    """Retained messages: set, sent on subscribe, replaced, cleared with an empty payload."""
    topic = f"interop/{args.run}/retained"
    publisher = Peer(args, "pub")
    publisher.connect()
    publisher.publish(topic, "one", 1, retain=True)
    first = Peer(args, "sub-first")
    first.connect()
    first.subscribe(topic, 1)
    result = {"on_subscribe_first": first.receive(1, "the retained message")}
    publisher.publish(topic, "two", 1, retain=True)
    result["live_replace"] = first.receive(1, "the replacing message")
    second = Peer(args, "sub-second")
    second.connect()
    second.subscribe(topic, 1)
    result["on_subscribe_second"] = second.receive(1, "the replaced retained message")
    publisher.publish(topic, "", 1, retain=True)
    result["live_clear"] = first.receive(1, "the clearing message") + first.drain()
    third = Peer(args, "sub-third")
    third.connect()
    third.subscribe(topic, 1)
    publisher.publish(topic, "end", 1)
    result["after_clear"] = third.receive_until("end", "the end marker") + third.drain()
    for peer in (first, second, third, publisher):
        peer.disconnect()
    for messages in result.values():
        relative(messages, topic)
    return result


def scenario_will(args):
    """The will is published on an abnormal disconnect, not after a clean DISCONNECT."""
    prefix = f"interop/{args.run}/will/"
    watcher = Peer(args, "watcher")
    watcher.connect()
    watcher.subscribe(prefix + "#", 1)

    dying = Peer(args, "dying")
    dying.connect(will=(prefix + "abnormal", "gone", 1), loop=False)
    dying.kill()
    result = {"after_kill": watcher.receive(1, "the will after the socket was killed")}

    polite = Peer(args, "polite")
    polite.connect(will=(prefix + "clean", "must not be sent", 1))
    polite.disconnect()
    if args.version == "5":
        # DISCONNECT 0x04 ends the connection cleanly and asks for the will.
        asking = Peer(args, "asking")
        asking.connect(will=(prefix + "asked", "sent on request", 1))
        asking.disconnect(reason="Disconnect with will message")
    time.sleep(QUIET)
    marker = Peer(args, "marker")
    marker.connect()
    marker.publish(prefix + "marker", "end", 1)
    result["after_disconnect"] = watcher.receive_until("end", "the end marker")
    result["after_disconnect"] += watcher.drain()
    for peer in (watcher, marker):
        peer.disconnect()
    for messages in result.values():
        relative(messages, prefix)
    return result


def scenario_shared(args):
    """A shared subscription gives each message to exactly one member of the group."""
    topic = f"interop/{args.run}/shared"
    members = [Peer(args, f"member-{i}") for i in range(2)]
    plain = Peer(args, "plain")
    publisher = Peer(args, "pub")
    for peer in members + [plain, publisher]:
        peer.connect()
    granted = [member.subscribe(f"$share/group-{args.run}/{topic}", 1) for member in members]
    granted.append(plain.subscribe(topic, 1))
    count = 10
    for i in range(count):
        publisher.publish(topic, f"m{i}", 1)
    got_plain = plain.receive(count, "messages on the plain subscription") + plain.drain()
    got_members = [[] for _ in members]
    deadline = time.monotonic() + TIMEOUT
    while sum(map(len, got_members)) < count and time.monotonic() < deadline:
        for i, member in enumerate(members):
            while not member.messages.empty():
                got_members[i].append(describe(member.messages.get()))
        time.sleep(0.02)
    for i, member in enumerate(members):
        got_members[i] += member.drain()
    payloads = [m["payload"] for got in got_members for m in got]
    result = {
        "granted": granted,
        "plain_count": len(got_plain),
        "group_count": len(payloads),
        "group_distinct": len(set(payloads)),
        "group_missing": sorted({f"m{i}" for i in range(count)} - set(payloads)),
        "every_member_served": all(got_members),
    }
    for peer in members + [plain, publisher]:
        peer.disconnect()
    return result


def scenario_alias(args):
    """Topic aliases from client to broker: set, used with an empty topic, remapped."""
    if args.version != "5":
        raise Failure("topic aliases need MQTT 5")
    prefix = f"interop/{args.run}/alias/"
    subscriber = Peer(args, "sub")
    publisher = Peer(args, "pub")
    subscriber.connect()
    publisher.connect()
    subscriber.subscribe(prefix + "#", 1)
    steps = [("a", "first"), ("", "second"), ("b", "third"), ("", "fourth")]
    for topic, payload in steps:
        properties = Properties(PacketTypes.PUBLISH)
        properties.TopicAlias = 1
        publisher.publish(prefix + topic if topic else "", payload, 1, properties=properties)
    got = subscriber.receive(len(steps), "aliased messages") + subscriber.drain()
    for peer in (subscriber, publisher):
        peer.disconnect()
    return {"received": relative(got, prefix)}


def scenario_resume(args):
    """A persistent session keeps its subscriptions and QoS 1 messages while offline."""
    topic = f"interop/{args.run}/resume"
    client_id = f"resume-{args.run}"
    # MQTT 3.1.1: Clean Session 0; MQTT 5: Clean Start 0 with a Session Expiry.
    subscriber = Peer(args, "sub", client_id=client_id, clean=False)
    result = {"first_session_present": subscriber.connect(clean=True, expiry=60)}
    subscriber.subscribe(topic, 1)
    subscriber.disconnect()

    publisher = Peer(args, "pub")
    publisher.connect()
    publisher.publish(topic, "offline-qos0", 0)
    publisher.publish(topic, "offline-qos1", 1)

    back = Peer(args, "sub-again", client_id=client_id, clean=False)
    result["resumed_session_present"] = back.connect(clean=False, expiry=60)
    result["queued"] = back.receive(1, "the message queued while offline") + back.drain()
    publisher.publish(topic, "online", 1)
    result["online"] = back.receive(1, "a message on the resumed subscription") + back.drain()
    back.disconnect()
    # End the session so that it does not linger in the broker.
    cleanup = Peer(args, "sub-cleanup", client_id=client_id, clean=True)
    cleanup.connect(clean=True, expiry=0)
    cleanup.disconnect()
    publisher.disconnect()
    for key in ("queued", "online"):
        relative(result[key], topic)
    return result


def scenario_burst(args):
    """Hundreds of QoS 1 and QoS 2 messages back to back all arrive, in order, once each."""
    prefix = f"interop/{args.run}/burst/"
    subscriber = Peer(args, "sub")
    publisher = Peer(args, "pub")
    for peer in (subscriber, publisher):
        peer.connect()
    subscriber.subscribe(prefix + "#", 2)
    count = {1: 400, 2: 200}
    infos = []
    for qos, n in count.items():
        for i in range(n):
            infos.append(publisher.client.publish(f"{prefix}{qos}", f"{i}", qos))
    deadline = time.monotonic() + 3 * TIMEOUT
    for info in infos:
        info.wait_for_publish(max(0.0, deadline - time.monotonic()))
    if not all(info.is_published() for info in infos):
        raise Failure("not every publish flow completed")
    received = {1: [], 2: []}
    while sum(map(len, received.values())) < sum(count.values()):
        try:
            message = subscriber.messages.get(timeout=TIMEOUT)
        except queue.Empty:
            got = {qos: len(r) for qos, r in received.items()}
            raise Failure(f"messages stopped arriving: {got} of {count}") from None
        received[message.qos].append(int(message.payload))
    extra = subscriber.drain()
    for peer in (subscriber, publisher):
        peer.disconnect()
    return {
        f"qos{qos}": "all in order" if got == list(range(count[qos])) else f"{len(got)} out of order"
        for qos, got in received.items()
    } | {"extra": len(extra)}


def scenario_large(args):
    """A 300 KiB payload (many TCP segments and WebSocket frames) arrives intact."""
    topic = f"interop/{args.run}/large"
    subscriber = Peer(args, "sub")
    publisher = Peer(args, "pub")
    subscriber.connect()
    publisher.connect()
    subscriber.subscribe(topic, 1)
    payload = bytes((i * 7 + 3) % 251 for i in range(300 * 1024))
    publisher.publish(topic, payload, 1)
    got = subscriber.receive(1, "the large message")
    for peer in (subscriber, publisher):
        peer.disconnect()
    return {"received": relative(got, topic)}


def scenario_takeover(args):
    """A second connection with the same client id takes the session over: the first one is
    disconnected (MQTT 5: with reason 0x8E), the second stays."""
    client_id = f"takeover-{args.run}"
    topic = f"interop/{args.run}/takeover"
    first = Peer(args, "first", client_id=client_id)
    first.connect()
    second = Peer(args, "second", client_id=client_id)
    second.connect()
    result = {"first_disconnected": first.disconnected.wait(TIMEOUT)}
    if args.version == "5":
        result["first_reason"] = first.disconnect_reason
    second.subscribe(topic, 1)
    publisher = Peer(args, "pub")
    publisher.connect()
    publisher.publish(topic, "to the new connection", 1)
    result["second_receives"] = relative(second.receive(1, "a message"), topic)
    result["second_connected"] = not second.disconnected.is_set()
    for peer in (second, publisher):
        peer.disconnect()
    return result


def scenario_options(args):
    """MQTT 5 subscription options: No Local (MQTT-3.8.3-3), Retain As Published
    (MQTT-3.3.1-12, -13), Retain Handling 0, 1 and 2 (MQTT-3.3.1-9, -10, -11)."""
    if args.version != "5":
        raise Failure("subscription options need MQTT 5")
    prefix = f"interop/{args.run}/options/"
    client = Peer(args, "self")
    client.connect()
    client.publish(prefix + "kept", "retained", 1, retain=True)

    def sub(filter_, **options):
        return client.subscribe(prefix + filter_, options=SubscribeOptions(qos=1, **options))

    sub("local", noLocal=True)
    client.publish(prefix + "local", "own message", 1)
    client.publish(prefix + "end", "end", 1)  # not subscribed yet: goes nowhere
    sub("rap/#", retainAsPublished=True)
    sub("norap/#", retainAsPublished=False)
    result = {"no_local": client.drain()}
    publisher = Peer(args, "pub")
    publisher.connect()
    publisher.publish(prefix + "rap/x", "kept flag", 1, retain=True)
    publisher.publish(prefix + "norap/x", "cleared flag", 1, retain=True)
    result["retain_as_published"] = sorted(
        relative(client.receive(2, "retained messages forwarded"), prefix),
        key=lambda m: m["topic"],
    )
    handling = {}
    for name, value in (("send", 0), ("send_if_new", 1), ("never", 2)):
        first = sub("kept", retainHandling=value)
        got = client.drain()
        again = sub("kept", retainHandling=value)
        got_again = client.drain()
        handling[name] = {
            "granted": [first, again],
            "first": [m["payload"] for m in got],
            "again": [m["payload"] for m in got_again],
        }
        client.client.unsubscribe(prefix + "kept")
        time.sleep(0.1)
    result["retain_handling"] = handling
    for topic in ("kept", "rap/x", "norap/x"):
        publisher.publish(prefix + topic, "", 1, retain=True)
    for peer in (client, publisher):
        peer.disconnect()
    return result


def scenario_expiry(args):
    """MQTT 5 Message Expiry (MQTT-3.3.2-5, -6): a message queued for an offline session
    past its expiry is not delivered; one within it is, its interval counted down."""
    if args.version != "5":
        raise Failure("message expiry needs MQTT 5")
    topic = f"interop/{args.run}/expiry"
    client_id = f"expiry-{args.run}"
    subscriber = Peer(args, "sub", client_id=client_id)
    subscriber.connect(clean=True, expiry=60)
    subscriber.subscribe(topic, 1)
    subscriber.disconnect()
    publisher = Peer(args, "pub")
    publisher.connect()
    for payload, interval in (("short", 1), ("long", 60)):
        properties = Properties(PacketTypes.PUBLISH)
        properties.MessageExpiryInterval = interval
        publisher.publish(topic, payload, 1, properties=properties)
    time.sleep(2.5)
    back = Peer(args, "sub-again", client_id=client_id)
    back.connect(clean=False, expiry=0)
    got = back.receive(1, "the message not yet expired") + back.drain()
    for message in got:
        left = message.get("expiry")
        if left is not None:
            message["expiry"] = "counted down" if 0 < left <= 58 else left
    for peer in (back, publisher):
        peer.disconnect()
    return {"received": relative(got, topic)}


def scenario_subid(args):
    """MQTT 5 Subscription Identifiers (MQTT-3.3.4-3, MQTT-3.8.2-1): every matching
    subscription's identifier comes with the message, none for a subscription without."""
    if args.version != "5":
        raise Failure("subscription identifiers need MQTT 5")
    prefix = f"interop/{args.run}/subid/"
    subscriber = Peer(args, "sub")
    subscriber.connect()
    # Mosquitto sends one copy per matching subscription, each with its identifier; a broker
    # may also send one copy with them all (MQTT-3.3.4-4, -5). Either way, what the client
    # learns is the set of identifiers for each message: that is compared.
    for filter_, identifier in (("a/#", 7), ("a/+", 300), ("+/b", None)):
        properties = None
        if identifier is not None:
            properties = Properties(PacketTypes.SUBSCRIBE)
            properties.SubscriptionIdentifier = identifier
        subscriber.subscribe(prefix + filter_, 1, properties=properties)
    publisher = Peer(args, "pub")
    publisher.connect()
    publisher.publish(prefix + "a/b", "all three", 1)
    publisher.publish(prefix + "a/c", "two", 1)
    publisher.publish(prefix + "z/b", "none", 1)
    got = subscriber.receive_until("none", "messages") + subscriber.drain()
    for peer in (subscriber, publisher):
        peer.disconnect()
    identifiers = {}
    for message in relative(got, prefix):
        ids = identifiers.setdefault(f'{message["topic"]} {message["payload"]}', [])
        ids.extend(message.get("subscription_ids", []))
    return {"identifiers": {key: sorted(set(ids)) for key, ids in identifiers.items()}}


def scenario_assigned(args):
    """An empty client id: MQTT 5 gets an Assigned Client Identifier (MQTT-3.1.3-7, 3.2.2.3.7);
    MQTT 3.1.1 with Clean Session 1 is accepted (MQTT-3.1.3-6); messages flow either way."""
    topic = f"interop/{args.run}/assigned"
    peer = Peer(args, "anonymous", client_id="")
    peer.connect()
    result = {}
    if args.version == "5":
        assigned = getattr(peer.connack_properties, "AssignedClientIdentifier", None)
        result["assigned"] = bool(assigned)
    peer.subscribe(topic, 1)
    peer.publish(topic, "hello", 1)
    result["received"] = relative(peer.receive(1, "its own message"), topic)
    peer.disconnect()
    return result


def scenario_unsubscribe(args):
    """After UNSUBSCRIBE no more messages arrive on that filter (MQTT-3.10.4-2); others go on."""
    prefix = f"interop/{args.run}/unsub/"
    subscriber = Peer(args, "sub")
    publisher = Peer(args, "pub")
    subscriber.connect()
    publisher.connect()
    subscriber.subscribe(prefix + "a", 1)
    subscriber.subscribe(prefix + "b", 1)
    publisher.publish(prefix + "a", "before", 1)
    before = subscriber.receive(1, "a message before unsubscribing")
    done = threading.Event()
    subscriber.client.on_unsubscribe = lambda *_: done.set()
    subscriber.client.unsubscribe(prefix + "a")
    if not done.wait(TIMEOUT):
        raise Failure(f"no UNSUBACK within {TIMEOUT}s")
    publisher.publish(prefix + "a", "after", 1)
    publisher.publish(prefix + "b", "end", 1)
    after = subscriber.receive_until("end", "the end marker") + subscriber.drain()
    for peer in (subscriber, publisher):
        peer.disconnect()
    return {"before": relative(before, prefix), "after": relative(after, prefix)}


def scenario_will_delay(args):
    """MQTT 5 Will Delay (MQTT-3.1.3-9): a client back within the delay cancels its will;
    one that does not come back has it published after the delay."""
    if args.version != "5":
        raise Failure("will delay needs MQTT 5")
    prefix = f"interop/{args.run}/willdelay/"
    watcher = Peer(args, "watcher")
    watcher.connect()
    watcher.subscribe(prefix + "#", 1)
    returning_id = f"returning-{args.run}"
    returning = Peer(args, "returning", client_id=returning_id)
    returning.connect(will=(prefix + "returning", "must not be sent", 1), will_delay=3,
                      expiry=60, loop=False)
    returning.kill()
    leaving = Peer(args, "leaving")
    leaving.connect(will=(prefix + "leaving", "after the delay", 1), will_delay=2,
                    expiry=60, loop=False)
    leaving.kill()
    time.sleep(0.3)
    back = Peer(args, "back", client_id=returning_id)
    back.connect(clean=False, expiry=0)
    early = watcher.drain()
    time.sleep(3)
    late = watcher.drain()
    back.disconnect()
    watcher.disconnect()
    return {"within_delay": relative(early, prefix), "after_delays": relative(late, prefix)}


def scenario_redeliver(args):
    """Unacknowledged QoS 1 messages are sent again, with DUP set and in order, when the
    persistent session reconnects (MQTT-4.4.0-1, 3.1.1 MQTT-3.3.1-1)."""
    topic = f"interop/{args.run}/redeliver"
    client_id = f"redeliver-{args.run}"
    subscriber = Peer(args, "sub", client_id=client_id, clean=False, manual_ack=True)
    subscriber.connect(clean=True, expiry=60, loop=False)
    subscriber.client.loop_start()
    subscriber.subscribe(topic, 1)
    publisher = Peer(args, "pub")
    publisher.connect()
    for i in range(3):
        publisher.publish(topic, f"m{i}", 1)
    first = subscriber.receive(3, "messages, not acknowledged")
    subscriber.client.loop_stop()
    subscriber.kill()
    time.sleep(0.2)
    back = Peer(args, "sub-again", client_id=client_id, clean=False)
    result = {"resumed_session_present": back.connect(clean=False, expiry=0)}
    result["first"] = relative(first, topic)
    result["again"] = relative(back.receive(3, "messages sent again") + back.drain(), topic)
    for peer in (back, publisher):
        peer.disconnect()
    return result


def scenario_receive_max(args):
    """MQTT 5 Receive Maximum from the client: at most that many unacknowledged QoS 1
    messages are sent to it at once (MQTT-3.3.4-9); the next goes once one is acknowledged."""
    if args.version != "5":
        raise Failure("Receive Maximum needs MQTT 5")
    topic = f"interop/{args.run}/receive-max"
    subscriber = Peer(args, "sub", manual_ack=True)
    subscriber.connect(ReceiveMaximum=2)
    subscriber.subscribe(topic, 1)
    publisher = Peer(args, "pub")
    publisher.connect()
    for i in range(5):
        publisher.publish(topic, f"m{i}", 1)
    result = {"before_ack": [], "after_acks": []}
    pending = []
    while not subscriber.messages.empty() or not pending:
        message = get(subscriber.messages, "sub: the first messages")
        pending.append(message)
        result["before_ack"].append(message.payload.decode())
        if len(pending) >= 2:
            break
    time.sleep(QUIET)
    while not subscriber.messages.empty():
        message = subscriber.messages.get()
        pending.append(message)
        result["before_ack"].append(message.payload.decode())
    # Acknowledge one at a time: each acknowledgement lets one more through.
    while pending:
        message = pending.pop(0)
        subscriber.client.ack(message.mid, message.qos)
        if len(result["before_ack"]) + len(result["after_acks"]) < 5:
            message = get(subscriber.messages, "sub: a message after an acknowledgement")
            pending.append(message)
            result["after_acks"].append(message.payload.decode())
    result["extra"] = len(subscriber.drain())
    for peer in (subscriber, publisher):
        peer.disconnect()
    return result


def scenario_max_packet(args):
    """MQTT 5 Maximum Packet Size from the client: a message too large for it is not sent to
    it (MQTT-3.1.2-24, -25), smaller ones are."""
    if args.version != "5":
        raise Failure("Maximum Packet Size needs MQTT 5")
    topic = f"interop/{args.run}/max-packet"
    small = Peer(args, "small")
    small.connect(MaximumPacketSize=512)
    small.subscribe(topic, 1)
    publisher = Peer(args, "pub")
    publisher.connect()
    publisher.publish(topic, "x" * 2000, 1)
    publisher.publish(topic, "fits", 1)
    got = small.receive_until("fits", "the message that fits") + small.drain()
    still = not small.disconnected.is_set()
    for peer in (small, publisher):
        peer.disconnect()
    return {"received": relative(got, topic), "still_connected": still}


def scenario_properties(args):
    """MQTT 5 PUBLISH properties reach the subscriber unaltered: Response Topic
    (MQTT-3.3.2-15), Correlation Data (MQTT-3.3.2-16), User Properties in order (MQTT-3.3.2-17,
    -18), Content Type (MQTT-3.3.2-20), Payload Format Indicator (MQTT-3.3.2-4)."""
    if args.version != "5":
        raise Failure("PUBLISH properties need MQTT 5")
    topic = f"interop/{args.run}/properties"
    subscriber = Peer(args, "sub")
    subscriber.connect()
    subscriber.subscribe(topic, 1)
    publisher = Peer(args, "pub")
    publisher.connect()
    properties = Properties(PacketTypes.PUBLISH)
    properties.ResponseTopic = "reply/here"
    properties.CorrelationData = b"\x00\x01corr"
    properties.ContentType = "text/plain"
    properties.PayloadFormatIndicator = 1
    properties.UserProperty = [("b", "2"), ("a", "1"), ("b", "3")]
    publisher.publish(topic, "with properties", 1, properties=properties)
    got = subscriber.receive(1, "the message with properties")
    for peer in (subscriber, publisher):
        peer.disconnect()
    return {"received": relative(got, topic)}


def scenario_retained_many(args):
    """Many retained messages on many levels: each subscription gets exactly those its filter
    matches (MQTT-3.3.1-6 in 3.1.1, MQTT-3.3.1-9 in 5.0; topic matching MQTT-4.7.1-2, -3)."""
    prefix = f"interop/{args.run}/many"
    publisher = Peer(args, "pub")
    publisher.connect()
    topics = [f"{prefix}/{a}/{b}" for a in ("x", "y", "z") for b in range(10)]
    topics += [f"{prefix}/{a}" for a in ("x", "y")] + [f"{prefix}/x/1/deep"]
    for topic in topics:
        publisher.publish(topic, topic[len(prefix):], 1, retain=True)
    result = {}
    for filter_ in ("#", "x/#", "+/3", "+", "x/+/deep", "+/+/+", "y/7"):
        subscriber = Peer(args, "sub")
        subscriber.connect()
        subscriber.subscribe(f"{prefix}/{filter_}", 1)
        marker = f"{prefix}/marker"
        subscriber.subscribe(marker, 1)
        publisher.publish(marker, "end", 1)
        got = subscriber.receive_until("end", f"retained messages for {filter_}")
        result[filter_] = sorted(m["payload"] for m in got if m["payload"] != "end")
        subscriber.disconnect()
    for topic in topics:
        publisher.publish(topic, "", 1, retain=True)
    publisher.disconnect()
    return result


def scenario_keepalive(args):
    """A client with a 1 s keep alive that stays idle for 3 s keeps its connection
    (PINGREQ answered, MQTT-3.12.4-1), and messages still flow."""
    topic = f"interop/{args.run}/keepalive"
    client = Peer(args, "idle")
    client.connect(keepalive=1)
    client.subscribe(topic, 1)
    time.sleep(3)
    still = not client.disconnected.is_set()
    client.publish(topic, "still here", 1)
    got = client.receive(1, "its own message after idling")
    client.disconnect()
    return {"still_connected": still, "received": relative(got, topic)}


def scenario_max_keepalive(args):
    """Connects asking for keep alives 0, 30, 60, 61 and 65535 (the broker's maximum is 60):
    for each, the CONNACK reason code (paho gives MQTT 3.1.1's return code 2 as 0x85) and the
    Server Keep Alive, if any."""
    result = {}
    for keepalive in (0, 30, 60, 61, 65535):
        peer = Peer(args, f"ka{keepalive}")
        kwargs = {"clean_start": True} if peer.v5 else {}
        try:
            peer.client.connect(args.host, peer.port, keepalive=keepalive, **kwargs)
        except OSError as error:
            raise Failure(f"connect to {args.host}:{peer.port}: {error}")
        peer.client.loop_start()
        _, code = get(peer.connacks, f"CONNACK for keep alive {keepalive}")
        properties = peer.connack_properties
        result[str(keepalive)] = {
            "code": code.value,
            "server_keep_alive": getattr(properties, "ServerKeepAlive", None),
        }
        if not code.is_failure:
            peer.client.disconnect()
        peer.client.loop_stop()
    return result


class RawClient:
    """A hand-written MQTT client over TCP, for flows no library lets a test drive (a QoS 2
    PUBLISH sent again before PUBREL)."""

    def __init__(self, args, client_id, receive_buffer=None, clean=True, expiry=0):
        if args.transport != "tcp":
            raise Failure("the raw client speaks TCP only")
        self.v5 = args.version == "5"
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect((args.host, take_port(args)))
        level = {"31": 3, "311": 4, "5": 5}[args.version]
        name = b"MQIsdp" if level == 3 else b"MQTT"
        properties = self.properties()
        if self.v5 and expiry:
            properties = b"\x05\x11" + expiry.to_bytes(4, "big")
        flags = 0x02 if clean else 0x00
        variable = self.string(name) + bytes([level, flags, 0, 30]) + properties
        self.send(0x10, variable + self.string(client_id.encode()))
        kind, body = self.read()
        if kind != 0x20 or body[1] != 0:
            raise Failure(f"raw CONNECT refused: {kind:#x} {body.hex()}")
        self.session_present = bool(body[0] & 1)

    @staticmethod
    def string(data):
        return len(data).to_bytes(2, "big") + data

    def properties(self):
        return b"\x00" if self.v5 else b""

    def send(self, first, body):
        length, encoded = len(body), b""
        while True:
            byte, length = length % 128, length // 128
            encoded += bytes([byte | (0x80 if length else 0)])
            if not length:
                break
        self.sock.sendall(bytes([first]) + encoded + body)

    def read_exact(self, n):
        data = b""
        while len(data) < n:
            try:
                chunk = self.sock.recv(n - len(data))
            except socket.timeout:
                raise Failure(f"raw client: nothing within {TIMEOUT}s") from None
            if not chunk:
                raise Failure("raw client: connection closed")
            data += chunk
        return data

    def read(self):
        first = self.read_exact(1)[0]
        length, shift = 0, 0
        while True:
            byte = self.read_exact(1)[0]
            length += (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        return first, self.read_exact(length)

    def expect(self, kind, packet_id, what):
        first, body = self.read()
        if first & 0xF0 != kind or body[:2] != packet_id.to_bytes(2, "big"):
            raise Failure(f"raw client: expected {what}, got {first:#x} {body.hex()}")

    def publish_qos2(self, topic, payload, packet_id, dup=False):
        body = self.string(topic.encode()) + packet_id.to_bytes(2, "big") + self.properties()
        self.send(0x34 | (0x08 if dup else 0), body + payload.encode())

    def subscribe(self, topic_filter, qos, packet_id=1):
        body = packet_id.to_bytes(2, "big") + self.properties()
        self.send(0x82, body + self.string(topic_filter.encode()) + bytes([qos]))
        self.expect(0x90, packet_id, "SUBACK")

    def close(self):
        self.send(0xE0, b"")
        self.sock.close()


def scenario_qos2_dup(args):
    """QoS 2 exactly once: a PUBLISH sent again (DUP) before PUBREL is acknowledged with PUBREC
    again and not delivered twice (MQTT-4.3.3-2 in 3.1.1); the packet id is free once PUBCOMP
    is sent, and a new message on it is delivered."""
    topic = f"interop/{args.run}/qos2dup"
    subscriber = Peer(args, "sub")
    subscriber.connect()
    subscriber.subscribe(topic, 2)
    raw = RawClient(args, f"raw-{args.run}")
    raw.publish_qos2(topic, "once", 1)
    raw.expect(0x50, 1, "PUBREC")
    raw.publish_qos2(topic, "once", 1, dup=True)
    raw.expect(0x50, 1, "PUBREC for the duplicate")
    raw.send(0x62, (1).to_bytes(2, "big"))
    raw.expect(0x70, 1, "PUBCOMP")
    raw.publish_qos2(topic, "next", 1)
    raw.expect(0x50, 1, "PUBREC for the next message")
    raw.send(0x62, (1).to_bytes(2, "big"))
    raw.expect(0x70, 1, "PUBCOMP for the next message")
    got = subscriber.receive_until("next", "the messages") + subscriber.drain()
    raw.close()
    subscriber.disconnect()
    return {"received": relative(got, topic)}


def scenario_slow_consumer(args):
    """A subscriber that stops reading does not stall the broker: the publisher's messages all
    complete, and a healthy subscriber gets them; the stuck one's queue is bounded."""
    topic = f"interop/{args.run}/slow"
    stuck = RawClient(args, f"stuck-{args.run}", receive_buffer=4096)
    stuck.subscribe(topic, 1)  # and never reads again
    healthy = Peer(args, "healthy")
    healthy.connect()
    healthy.subscribe(topic, 1)
    publisher = Peer(args, "pub")
    publisher.connect()
    payload = "x" * 4096
    count = 3000
    started = time.monotonic()
    infos = [publisher.client.publish(topic, payload, 0) for _ in range(count)]
    for info in infos:
        info.wait_for_publish(max(0.0, started + 3 * TIMEOUT - time.monotonic()))
    publisher.publish(topic, "end", 1)
    published = all(info.is_published() for info in infos)
    # Counted up to the end marker and then until a quiet spell: a cluster carries QoS 0 on
    # core NATS and the QoS 1 marker through its stream, so the marker may overtake QoS 0
    # messages (MQTT orders a topic's messages per QoS only). Or until the deadline: Mosquitto
    # may not have sent the marker by then, and what is counted is what came.
    got, ended = 0, False
    deadline = time.monotonic() + 3 * TIMEOUT
    while time.monotonic() < deadline:
        wait = QUIET if ended else max(0.01, deadline - time.monotonic())
        try:
            message = healthy.messages.get(timeout=wait)
        except queue.Empty:
            break
        if message.payload == b"end":
            ended = True
        else:
            got += 1
    result = {
        "publisher_done": published,
        # QoS 0 may be dropped under load, but most arrive.
        "healthy_got_most": got >= count // 2,
    }
    stuck.sock.close()
    for peer in (healthy, publisher):
        peer.disconnect()
    return result


def scenario_session_expiry(args):
    """MQTT 5 Session Expiry: a session is kept for its interval after the connection closes
    (MQTT-3.1.2-23) and is gone after it: Session Present 0 then."""
    if args.version != "5":
        raise Failure("session expiry needs MQTT 5")
    client_id = f"expiring-{args.run}"
    result = {}
    for wait in (0.2, 2.5):
        client = Peer(args, "expiring", client_id=client_id)
        client.connect(clean=True, expiry=1)
        client.subscribe(f"interop/{args.run}/expiring", 1)
        client.disconnect()
        time.sleep(wait)
        back = Peer(args, "back", client_id=client_id)
        result[f"present_after_{wait}s"] = back.connect(clean=False, expiry=0)
        back.disconnect()
    return result


def scenario_will_retained(args):
    """A will with RETAIN set is published as a retained message (MQTT-3.1.2-17 in 3.1.1)."""
    topic = f"interop/{args.run}/will-retained"
    dying = Peer(args, "dying")
    dying.client.will_set(topic, "last words", 1, retain=True)
    dying.connect(loop=False)
    dying.kill()
    time.sleep(0.5)
    later = Peer(args, "later")
    later.connect()
    later.subscribe(topic, 1)
    got = later.receive(1, "the retained will")
    later.publish(topic, "", 1, retain=True)
    later.disconnect()
    return {"received": relative(got, topic)}


def scenario_overlap(args):
    """Overlapping subscriptions of one client: the message comes once, at the highest granted
    QoS (3.1.1 MQTT-3.3.5-1; 5.0 MQTT-3.3.4-2 allows more copies, brokers here send one)."""
    prefix = f"interop/{args.run}/overlap/"
    subscriber = Peer(args, "sub")
    subscriber.connect()
    subscriber.subscribe(prefix + "#", 0)
    subscriber.subscribe(prefix + "+", 2)
    subscriber.subscribe(prefix + "x", 1)
    publisher = Peer(args, "pub")
    publisher.connect()
    publisher.publish(prefix + "x", "once", 2)
    got = subscriber.receive(1, "the message") + subscriber.drain()
    for peer in (subscriber, publisher):
        peer.disconnect()
    return {"received": sorted(relative(got, prefix), key=lambda m: m["qos"])}


def scenario_fanout(args):
    """One publisher, 40 subscribers: every subscriber gets every QoS 1 message, in order."""
    topic = f"interop/{args.run}/fanout"
    subscribers = [Peer(args, f"sub-{i}") for i in range(40)]
    for subscriber in subscribers:
        subscriber.connect()
        subscriber.subscribe(topic, 1)
    publisher = Peer(args, "pub")
    publisher.connect()
    count = 25
    for i in range(count):
        publisher.publish(topic, f"{i}", 1)
    complete = 0
    for subscriber in subscribers:
        got = [m["payload"] for m in subscriber.receive(count, "fan-out messages")]
        complete += got == [f"{i}" for i in range(count)]
    extra = sum(len(subscriber.drain()) for subscriber in subscribers[:1])
    for peer in subscribers + [publisher]:
        peer.disconnect()
    return {"subscribers_with_all_in_order": complete, "extra": extra}


def scenario_will_session_end(args):
    """MQTT 5: a will whose delay is longer than the session expiry is published when the
    session ends (MQTT-3.1.3-9), not after the delay."""
    if args.version != "5":
        raise Failure("will delay needs MQTT 5")
    topic = f"interop/{args.run}/will-session-end"
    watcher = Peer(args, "watcher")
    watcher.connect()
    watcher.subscribe(topic, 1)
    dying = Peer(args, "dying")
    dying.connect(will=(topic, "session ended", 1), will_delay=30, expiry=1, loop=False)
    dying.kill()
    started = time.monotonic()
    got = watcher.receive(1, "the will at session end")
    waited = time.monotonic() - started
    watcher.disconnect()
    # The delay is 30 s; the session ends after 1 s (and `receive` waits at most 5 s).
    return {"received": relative(got, topic), "before_the_delay": waited < 30}


def alias_traffic(args, name, maximum, topics):
    """A subscriber announcing Topic Alias Maximum `maximum` gets one QoS 1 message on each
    of `topics` in turn; returns the topics it saw (resolved, after the run's prefix) and how
    the broker used aliases."""
    if args.version != "5":
        raise Failure("topic aliases need MQTT 5")
    prefix = f"interop/{args.run}/{name}/"
    subscriber = Peer(args, "sub")
    subscriber.connect(TopicAliasMaximum=maximum)
    subscriber.subscribe(prefix + "#", 1)
    publisher = Peer(args, "pub")
    publisher.connect()
    for i, topic in enumerate(topics):
        publisher.publish(prefix + topic, str(i), 1)
    got = subscriber.receive(len(topics), "messages") + subscriber.drain()
    for peer in (subscriber, publisher):
        peer.disconnect()
    return [m["topic"] for m in relative(got, prefix)], subscriber.alias_use


def scenario_alias_in(args):
    """MQTT 5: a client that accepts topic aliases from the broker still sees every message
    with its topic (whether or not the broker uses aliases, MQTT-3.3.2-12 ff.)."""
    topics, _ = alias_traffic(args, "alias-in", 5, ("a", "a", "b", "a", "b"))
    return {"topics": topics}


def scenario_alias_out(args):
    """MQTT 5: a subscriber announcing Topic Alias Maximum 10 gets messages on three topics;
    reports the topics (resolved) and how the broker used aliases (MQTT-3.3.2-11: none above
    10)."""
    topics, alias_use = alias_traffic(args, "alias-out", 10, (
        "court/1/score", "court/2/score", "court/1/score", "court/3/score",
        "court/2/score", "court/1/score", "court/3/score", "court/1/score"))
    return {"topics": topics, **alias_use}


def scenario_retained_expiry(args):
    """MQTT 5: a retained message with a Message Expiry is not sent to subscribers once it has
    expired (MQTT-3.3.2-5); one without expiry still is."""
    if args.version != "5":
        raise Failure("message expiry needs MQTT 5")
    prefix = f"interop/{args.run}/retained-expiry/"
    publisher = Peer(args, "pub")
    publisher.connect()
    properties = Properties(PacketTypes.PUBLISH)
    properties.MessageExpiryInterval = 1
    publisher.publish(prefix + "short", "expires", 1, retain=True, properties=properties)
    publisher.publish(prefix + "kept", "stays", 1, retain=True)
    time.sleep(2.2)
    subscriber = Peer(args, "sub")
    subscriber.connect()
    subscriber.subscribe(prefix + "#", 1)
    publisher.publish(prefix + "marker", "end", 1)
    got = subscriber.receive_until("end", "the end marker") + subscriber.drain()
    for topic in ("short", "kept"):
        publisher.publish(prefix + topic, "", 1, retain=True)
    for peer in (subscriber, publisher):
        peer.disconnect()
    return {"received": [m["payload"] for m in got]}


def scenario_shared_retained(args):
    """A shared subscription gets no retained messages when it is made (MQTT 5
    MQTT-3.8.4-4 territory; 4.8.2), while a plain one does."""
    topic = f"interop/{args.run}/shared-retained"
    publisher = Peer(args, "pub")
    publisher.connect()
    publisher.publish(topic, "retained", 1, retain=True)
    member = Peer(args, "member")
    member.connect()
    member.subscribe(f"$share/g-{args.run}/{topic}", 1)
    plain = Peer(args, "plain")
    plain.connect()
    plain.subscribe(topic, 1)
    publisher.publish(topic, "live", 1)
    result = {
        "member": [m["payload"] for m in member.receive_until("live", "the live message")],
        "plain": [m["payload"] for m in plain.receive_until("live", "the live message")],
    }
    publisher.publish(topic, "", 1, retain=True)
    for peer in (member, plain, publisher):
        peer.disconnect()
    return result


def scenario_empty_id_persistent(args):
    """MQTT 3.1.1: an empty client id with Clean Session 0 is refused with CONNACK 0x02
    (MQTT-3.1.3-8), and the connection closed (MQTT-3.2.2-5)."""
    if args.version != "311":
        raise Failure("this is the MQTT 3.1.1 rule")
    sock = socket.create_connection((args.host, take_port(args)), timeout=TIMEOUT)
    body = RawClient.string(b"MQTT") + bytes([4, 0x00, 0, 30]) + RawClient.string(b"")
    sock.sendall(bytes([0x10, len(body)]) + body)
    connack = sock.recv(4)
    try:
        closed = sock.recv(1) == b""
    except (socket.timeout, ConnectionResetError):
        closed = False
    sock.close()
    return {"connack": connack.hex(), "closed": closed}


def scenario_qos2_resume(args):
    """QoS 2 to a subscriber across a reconnection, driven by hand: a PUBLISH not yet
    acknowledged is sent again with DUP, and after PUBREC only PUBREL is sent again, never
    the PUBLISH (MQTT-4.4.0-1; MQTT-4.3.3-? in each version's QoS 2 flow)."""
    topic = f"interop/{args.run}/qos2-resume"
    client_id = f"q2r-{args.run}"
    # A new persistent session: MQTT 3.1.1 Clean Session 0 (the id is new), MQTT 5 Clean Start
    # 1 with a Session Expiry.
    raw = RawClient(args, client_id, clean=args.version == "5", expiry=60)
    raw.subscribe(topic, 2)
    publisher = Peer(args, "pub")
    publisher.connect()

    def next_packet(client, what):
        first, body = client.read()
        return first, body, what

    def describe_packet(first, body):
        kind = {0x30: "PUBLISH", 0x60: "PUBREL"}.get(first & 0xF0, f"{first:#x}")
        if kind == "PUBLISH":
            topic_len = int.from_bytes(body[:2], "big")
            packet_id = int.from_bytes(body[2 + topic_len:4 + topic_len], "big")
            return kind, packet_id, {"qos": (first >> 1) & 3, "dup": bool(first & 8)}
        return kind, int.from_bytes(body[:2], "big"), {}

    # 1. PUBLISH received, not acknowledged; connection lost.
    publisher.publish(topic, "first", 2)
    kind, first_id, flags = describe_packet(*raw.read())
    result = {"first": [kind, flags]}
    raw.sock.close()
    time.sleep(0.2)  # the broker sees the connection closed before the next one comes
    raw = RawClient(args, client_id, clean=False, expiry=60)
    result["first_session_present"] = raw.session_present
    kind, packet_id, flags = describe_packet(*raw.read())
    result["first_again"] = [kind, flags, packet_id == first_id]
    raw.send(0x50, packet_id.to_bytes(2, "big") + (b"\x00" if raw.v5 else b""))
    kind, packet_id, _ = describe_packet(*raw.read())
    result["first_release"] = [kind, packet_id == first_id]
    raw.send(0x70, packet_id.to_bytes(2, "big"))

    # 2. PUBLISH received and PUBREC sent, PUBREL received; connection lost before PUBCOMP.
    publisher.publish(topic, "second", 2)
    kind, second_id, flags = describe_packet(*raw.read())
    result["second"] = [kind, flags]
    raw.send(0x50, second_id.to_bytes(2, "big"))
    kind, packet_id, _ = describe_packet(*raw.read())
    result["second_release"] = [kind, packet_id == second_id]
    raw.sock.close()
    time.sleep(0.2)
    raw = RawClient(args, client_id, clean=False, expiry=60)
    kind, packet_id, flags = describe_packet(*raw.read())
    result["second_again"] = [kind, packet_id == second_id]
    raw.send(0x70, packet_id.to_bytes(2, "big"))

    # Nothing else is owed.
    publisher.publish(topic, "third", 2)
    kind, third_id, flags = describe_packet(*raw.read())
    result["then"] = [kind, flags]
    raw.send(0x50, third_id.to_bytes(2, "big"))
    raw.read()
    raw.send(0x70, third_id.to_bytes(2, "big"))
    raw.close()
    publisher.disconnect()
    # End the session.
    RawClient(args, client_id, clean=True).close()
    return result


def scenario_fanin(args):
    """Eight publishers, one wildcard subscriber: every QoS 1 message arrives, each
    publisher's in its order (MQTT-4.6.0-5)."""
    prefix = f"interop/{args.run}/fanin/"
    subscriber = Peer(args, "sub")
    subscriber.connect()
    subscriber.subscribe(prefix + "#", 1)
    publishers = [Peer(args, f"pub-{i}") for i in range(8)]
    for publisher in publishers:
        publisher.connect()
    count = 100
    infos = []
    for i in range(count):
        for n, publisher in enumerate(publishers):
            infos.append(publisher.client.publish(f"{prefix}{n}", f"{i}", 1))
    deadline = time.monotonic() + 3 * TIMEOUT
    for info in infos:
        info.wait_for_publish(max(0.0, deadline - time.monotonic()))
    got = {}
    for message in subscriber.receive(count * len(publishers), "fan-in messages"):
        got.setdefault(message["topic"], []).append(int(message["payload"]))
    extra = subscriber.drain()
    for peer in publishers + [subscriber]:
        peer.disconnect()
    in_order = sum(got.get(f"{prefix}{n}") == list(range(count)) for n in range(len(publishers)))
    return {"publishers_all_in_order": in_order, "extra": len(extra)}


def scenario_cross(args):
    """MQTT 3.1, 3.1.1 and 5.0 clients over TCP and WebSockets at once, each publishing to
    all the others: every one gets every other's message."""
    if not (args.tcp_port and args.ws_port):
        raise Failure("cross needs --tcp-port and --ws-port")
    topic = f"interop/{args.run}/cross"
    peers = []
    for version in ("31", "311", "5"):
        for transport, port in (("tcp", args.tcp_port), ("websockets", args.ws_port)):
            variant = argparse.Namespace(**vars(args))
            variant.version, variant.transport, variant.port = version, transport, port
            variant.port_cycle = None
            peer = Peer(variant, f"{version}-{transport[:2]}")
            peer.connect()
            peer.subscribe(topic, 1)
            peers.append(peer)
    for peer in peers:
        peer.publish(topic, f"from {peer.name}", 1)
    result = {}
    for peer in peers:
        got = sorted(m["payload"] for m in peer.receive(len(peers), "everyone's message"))
        got += [m["payload"] for m in peer.drain()]
        result[peer.name] = got == sorted(f"from {p.name}" for p in peers) or got
    for peer in peers:
        peer.disconnect()
    return result


def scenario_cross_node(args):
    """Publisher on one cluster node (--port), subscriber on another (--sub-port; or the first
    of --ports, the publisher on the second): QoS 0, 1 and 2 messages each arrive once, at
    their QoS, in order per QoS. QoS 0 crosses on core NATS once the subscriber's node has
    subscribed there, shortly after SUBACK: probes first."""
    if not args.sub_port and args.port_cycle is None:
        raise Failure("cross_node needs --sub-port or --ports")
    prefix = f"interop/{args.run}/cross-node/"
    there = argparse.Namespace(**vars(args))
    if args.sub_port:
        there.port = args.sub_port
    subscriber = Peer(there, "sub")
    subscriber.connect()
    granted = subscriber.subscribe(prefix + "#", 2)
    publisher = Peer(args, "pub")
    publisher.connect()
    deadline = time.monotonic() + TIMEOUT
    while True:
        publisher.publish(prefix + "probe", "probe", 0)
        try:
            if subscriber.messages.get(timeout=0.05).payload == b"probe":
                break
        except queue.Empty:
            pass
        if time.monotonic() > deadline:
            raise Failure(f"no probe crossed within {TIMEOUT}s")
    count = 5
    for qos in (0, 1, 2):
        for i in range(count):
            publisher.publish(f"{prefix}{qos}", f"{qos}-{i}", qos)
    got = [m for m in subscriber.receive_until("2-4", "the messages") + subscriber.drain()
           if m["payload"] != "probe"]
    by_qos = {}
    for message in got:
        by_qos.setdefault(message["topic"][len(prefix):], []).append(
            [message["payload"], message["qos"]])
    for peer in (subscriber, publisher):
        peer.disconnect()
    return {"granted": [granted], "received": by_qos}


def scenario_unicode(args):
    """UTF-8 topics and filters, and binary payloads, arrive unchanged (MQTT 1.5.3/1.5.4)."""
    prefix = f"interop/{args.run}/ünïcødé/"
    subscriber = Peer(args, "sub")
    subscriber.connect()
    subscriber.subscribe(prefix + "+/🎾", 1)
    publisher = Peer(args, "pub")
    publisher.connect()
    binary = bytes(range(256))
    publisher.publish(prefix + "court-ß/🎾", binary, 1)
    publisher.publish(prefix + "日本/🎾", "テニス", 1)
    got = []
    for _ in range(2):
        message = get(subscriber.messages, "sub: unicode messages")
        payload = "bytes 0 to 255" if message.payload == binary else message.payload.decode()
        got.append([message.topic[len(prefix):], payload])
    for peer in (subscriber, publisher):
        peer.disconnect()
    return {"received": sorted(got)}


def scenario_multi_sub(args):
    """One SUBSCRIBE with several filters: one return code each, in order (MQTT-3.8.4-5 in
    3.1.1), each filter working at its own QoS."""
    prefix = f"interop/{args.run}/multi/"
    subscriber = Peer(args, "sub")
    subscriber.connect()
    result, mid = subscriber.client.subscribe([(prefix + "a", 0), (prefix + "b", 1),
                                               (prefix + "c/#", 2)])
    if result != mqtt.MQTT_ERR_SUCCESS:
        raise Failure(f"subscribe: {mqtt.error_string(result)}")
    _, codes = get(subscriber.subacks, "sub: SUBACK")
    publisher = Peer(args, "pub")
    publisher.connect()
    for topic in ("a", "b", "c/d"):
        publisher.publish(prefix + topic, topic, 2)
    got = sorted(relative(subscriber.receive(3, "messages"), prefix), key=lambda m: m["topic"])
    for peer in (subscriber, publisher):
        peer.disconnect()
    return {"granted": codes, "received": [[m["topic"], m["qos"]] for m in got]}


def scenario_violations(args):
    """Protocol violations from a hand-driven client over TCP, and what the broker does about
    each: what it sends back (packet names, with the reason code of CONNACK and DISCONNECT),
    then whether it closes the connection."""
    v5 = args.version == "5"
    level = 5 if v5 else 4
    props = b"\x00" if v5 else b""
    counter = iter(range(1000))

    def string(data):
        return len(data).to_bytes(2, "big") + data

    def packet(first, body):
        return bytes([first, len(body)]) + body

    def connect(client_id=None, level=level, flags=0x02, protocol=b"MQTT"):
        # A fresh id each time: a connection still open must not be taken over.
        client_id = client_id or f"v{args.run}-{next(counter)}".encode()
        variable = string(protocol) + bytes([level, flags, 0, 30]) + (props if level == 5 else b"")
        return packet(0x10, variable + string(client_id))

    def publish(topic, payload=b"x", alias=None):
        properties = props
        if v5 and alias is not None:
            properties = b"\x03\x23" + alias.to_bytes(2, "big")
        return packet(0x30, string(topic) + properties + payload)

    def subscribe(filter_, first=0x82):
        return packet(first, b"\x00\x01" + props + string(filter_) + b"\x00")

    # Each case: what goes first (a CONNECT, its CONNACK read before going on), then the
    # violation on its own, so that the broker has read everything when it closes (a close
    # with unread data is a reset, which can swallow its DISCONNECT on the way).
    cases = {
        "first packet not CONNECT": (b"", publish(b"t")),
        "second CONNECT": (connect(), connect()),
        "unknown protocol level": (b"", connect(level=9)),
        "reserved CONNECT flag set": (b"", connect(flags=0x03)),
        "wildcard in PUBLISH topic": (connect(), publish(b"a/+")),
        "invalid UTF-8 in topic": (connect(), publish(b"a/\xc3\x28")),
        "bad SUBSCRIBE header flags": (connect(), subscribe(b"a", first=0x80)),
        "invalid filter a/#/b": (connect(), subscribe(b"a/#/b")),
        "SUBSCRIBE with no filter": (connect(), packet(0x82, b"\x00\x01" + props)),
    }
    if v5:
        cases["topic alias 0"] = (connect(), publish(b"t", alias=0))
        cases["topic alias above the maximum"] = (connect(), publish(b"t", alias=60000))
        cases["unknown alias with an empty topic"] = (connect(), publish(b"", alias=7))
    names = {2: "CONNACK", 3: "PUBLISH", 9: "SUBACK", 13: "PINGRESP", 14: "DISCONNECT"}
    result = {}
    for name, (setup, violation) in cases.items():
        sock = socket.create_connection((args.host, take_port(args)), timeout=TIMEOUT)
        received, closed = b"", False
        if setup:
            sock.sendall(setup)
            while len(received) < 2 or len(received) < 2 + received[1]:
                chunk = sock.recv(64)
                if not chunk:
                    raise Failure(f"{name}: closed before CONNACK")
                received += chunk
        sock.sendall(violation)
        sock.settimeout(1.5)
        try:
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    closed = True
                    break
                received += chunk
        except socket.timeout:
            pass
        except ConnectionResetError:
            closed = True
        sock.close()
        seen = []
        while len(received) >= 2:
            kind, length = received[0] >> 4, received[1]
            body = received[2:2 + length]
            label = names.get(kind, str(kind))
            if kind == 2 and len(body) >= 2:
                label += f" {body[1]:#04x}"
            if kind == 9 and len(body) >= 3:
                label += f" {body[-1]:#04x}"
            if kind == 14:
                label += f" {body[0]:#04x}" if body else " 0x00"
            seen.append(label)
            received = received[2 + length:]
        result[name] = seen + ["closed" if closed else "open"]
    return result


def scenario_resume_many(args):
    """300 QoS 1 messages queued for an offline persistent session all arrive, in order, when
    it comes back (more than any in-flight window at once)."""
    topic = f"interop/{args.run}/resume-many"
    client_id = f"resume-many-{args.run}"
    subscriber = Peer(args, "sub", client_id=client_id, clean=False)
    subscriber.connect(clean=True, expiry=60)
    subscriber.subscribe(topic, 1)
    subscriber.disconnect()
    publisher = Peer(args, "pub")
    publisher.connect()
    count = 300
    infos = [publisher.client.publish(topic, f"{i}", 1) for i in range(count)]
    deadline = time.monotonic() + 3 * TIMEOUT
    for info in infos:
        info.wait_for_publish(max(0.0, deadline - time.monotonic()))
    if not all(info.is_published() for info in infos):
        raise Failure("not every publish flow completed")
    back = Peer(args, "sub-again", client_id=client_id, clean=False)
    back.connect(clean=False, expiry=0)
    # Each message's first copy, in arrival order, until all have come (each waited for at most
    # TIMEOUT); any copy again, then or within QUIET after, is a duplicate (QoS 1 allows them).
    first, seen, duplicates = [], set(), 0
    while len(first) < count:
        try:
            number = int(back.messages.get(timeout=TIMEOUT).payload)
        except queue.Empty:
            break
        if number in seen:
            duplicates += 1
        else:
            seen.add(number)
            first.append(number)
    duplicates += len(back.drain())
    for peer in (back, publisher):
        peer.disconnect()
    return {
        "in_order": first == sorted(first),
        "missing": count - len(first),
        "duplicates": duplicates,
    }


def scenario_keepalive_expired(args):
    """A client silent for longer than one and a half times its keep alive is disconnected
    (MQTT-3.1.2-24 in 3.1.1, MQTT-3.1.2-22 in 5.0), and its will is published."""
    topic = f"interop/{args.run}/keepalive-expired"
    watcher = Peer(args, "watcher")
    watcher.connect()
    watcher.subscribe(topic, 1)
    sock = socket.create_connection((args.host, take_port(args)), timeout=TIMEOUT)
    v5 = args.version == "5"
    props = b"\x00" if v5 else b""
    # Will flag, will QoS 1, clean: keep alive 1 s.
    variable = RawClient.string(b"MQTT") + bytes([5 if v5 else 4, 0x0E, 0, 1]) + props
    payload = (RawClient.string(f"silent-{args.run}".encode()) + props
               + RawClient.string(topic.encode()) + RawClient.string(b"timed out"))
    body = variable + payload
    sock.sendall(bytes([0x10, len(body)]) + body)
    started = time.monotonic()
    connack = sock.recv(64)
    # Mosquitto checks keep alives only every few seconds: wait longer than usual.
    sock.settimeout(3 * TIMEOUT)
    after, closed = b"", False
    try:
        while True:
            chunk = sock.recv(64)
            if not chunk:
                closed = True
                break
            after += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    waited = time.monotonic() - started
    sock.close()
    got = watcher.receive(1, "the will of the silent client")
    watcher.disconnect()
    return {
        "connack": connack[2:4].hex(),  # flags and return code
        "closed": closed,
        "not_before_1.5s": waited >= 1.45,
        "told": after.hex(),
        "will": relative(got, topic),
    }


def scenario_takeover_clean(args):
    """A connection with Clean Session 1 (MQTT 5: Session Expiry 0) taken over by one asking
    for a persistent session: the old session ended with its connection (MQTT-3.1.2-6 in
    3.1.1), so Session Present is 0 and its subscription is gone."""
    client_id = f"takeover-clean-{args.run}"
    topic = f"interop/{args.run}/takeover-clean"
    first = Peer(args, "first", client_id=client_id, clean=True)
    first.connect(clean=True, expiry=0)
    first.subscribe(topic, 1)
    second = Peer(args, "second", client_id=client_id, clean=False)
    result = {"session_present": second.connect(clean=False, expiry=60)}
    publisher = Peer(args, "pub")
    publisher.connect()
    publisher.publish(topic, "to the old subscription", 1)
    result["old_subscription_delivers"] = bool(second.drain())
    for peer in (second, publisher):
        peer.disconnect()
    return result


def scenario_takeover_cases(args):
    """Session takeover, by case: a persistent session taken over by a clean one starts afresh;
    one taken over by a persistent one carries on (subscription kept); and whether the old
    connection's will (no delay) is published when it is taken over."""
    prefix = f"interop/{args.run}/takeover-cases/"
    watcher = Peer(args, "watcher")
    watcher.connect()
    watcher.subscribe(prefix + "will/#", 1)
    publisher = Peer(args, "pub")
    publisher.connect()
    result = {}
    for case, (name, second_clean) in enumerate((("persistent_then_clean", True),
                                                 ("persistent_then_persistent", False))):
        # One client id per case (the names' first 14 characters were the same).
        client_id = f"takeover-{case}-{args.run}"
        topic = f"{prefix}{name}"
        first = Peer(args, "first", client_id=client_id, clean=False)
        first.connect(clean=True, expiry=60, will=(f"{prefix}will/{name}", "taken over", 1))
        first.subscribe(topic, 1)
        second = Peer(args, "second", client_id=client_id, clean=second_clean)
        present = second.connect(clean=second_clean, expiry=0 if second_clean else 60)
        publisher.publish(topic, "after takeover", 1)
        result[name] = {
            "session_present": present,
            "old_subscription_delivers": bool(second.drain()),
        }
        second.disconnect()
    # The wills are published, if at all, when the old connections are taken over.
    publisher.publish(prefix + "will/marker", "end", 1)
    wills = watcher.receive_until("end", "the end marker")
    result["wills"] = sorted(m["topic"][len(prefix + "will/"):] for m in wills
                             if m["payload"] != "end")
    for peer in (watcher, publisher):
        peer.disconnect()
    return result


def scenario_v5_codes(args):
    """MQTT 5 reason codes a client sees: PUBACK and PUBREC 0x10 (No matching subscribers),
    UNSUBACK 0x11 (No subscription existed), a retained message sent on subscribe carrying the
    subscription identifier, and a DISCONNECT that sets Session Expiry 0 ending the session."""
    if args.version != "5":
        raise Failure("reason codes need MQTT 5")
    prefix = f"interop/{args.run}/codes/"
    client = Peer(args, "client")
    acks = queue.Queue()
    client.client.on_publish = lambda _c, _u, mid, code, _p: acks.put(code.value)
    unsubacks = queue.Queue()
    client.client.on_unsubscribe = lambda _c, _u, mid, codes, _p: unsubacks.put(
        [c.value for c in codes])
    client.connect()
    result = {}
    for qos in (1, 2):
        client.client.publish(prefix + "nobody", "x", qos)
        result[f"qos{qos}_no_subscribers"] = get(acks, "the acknowledgement")
    client.client.unsubscribe(prefix + "never")
    result["unsubscribe_unknown"] = get(unsubacks, "UNSUBACK")
    client.publish(prefix + "kept", "retained", 1, retain=True)
    properties = Properties(PacketTypes.SUBSCRIBE)
    properties.SubscriptionIdentifier = 42
    client.subscribe(prefix + "kept", 1, properties=properties)
    result["retained_on_subscribe"] = relative(client.receive(1, "the retained message"), prefix)
    client.publish(prefix + "kept", "", 1, retain=True)
    client.drain()
    client.disconnect()

    client_id = f"codes-{args.run}"
    persistent = Peer(args, "persistent", client_id=client_id)
    persistent.connect(clean=True, expiry=60)
    disconnect = Properties(PacketTypes.DISCONNECT)
    disconnect.SessionExpiryInterval = 0
    persistent.client.disconnect(properties=disconnect)
    persistent.disconnected.wait(TIMEOUT)
    persistent.client.loop_stop()
    time.sleep(0.2)
    back = Peer(args, "back", client_id=client_id)
    result["present_after_expiry_0_on_disconnect"] = back.connect(clean=False, expiry=0)
    back.disconnect()
    return result


def scenario_takeover_will_delay(args):
    """MQTT 5 Will Delay across a takeover (MQTT-3.1.3-9): taken over by a clean start, the
    session ends, so a will waiting on its delay goes at once; taken over by a connection that
    resumes the session, the will is not sent, even once its delay has passed."""
    if args.version != "5":
        raise Failure("will delay needs MQTT 5")
    prefix = f"interop/{args.run}/takeover-will-delay/"
    watcher = Peer(args, "watcher")
    watcher.connect()
    watcher.subscribe(prefix + "#", 1)
    result = {}
    for name, clean in (("clean_takeover", True), ("resuming_takeover", False)):
        client_id = f"{name[:8]}-{args.run}"
        first = Peer(args, "first", client_id=client_id)
        first.connect(clean=True, expiry=60, will=(prefix + name, "will", 1),
                      will_delay=4 if clean else 1)
        second = Peer(args, "second", client_id=client_id)
        started = time.monotonic()
        second.connect(clean=clean, expiry=60)
        try:
            watcher.receive(1, "the will")
            waited = time.monotonic() - started
            result[name] = "will at once" if waited < 2.5 else "will after its delay"
        except Failure:
            result[name] = "no will within 5 s"
        second.disconnect()
    watcher.disconnect()
    return result


SCENARIOS = {
    "takeover_will_delay": scenario_takeover_will_delay,
    "v5_codes": scenario_v5_codes,
    "takeover_cases": scenario_takeover_cases,
    "takeover_clean": scenario_takeover_clean,
    "resume_many": scenario_resume_many,
    "keepalive_expired": scenario_keepalive_expired,
    "violations": scenario_violations,
    "fanin": scenario_fanin,
    "cross": scenario_cross,
    "unicode": scenario_unicode,
    "multi_sub": scenario_multi_sub,
    "qos2_resume": scenario_qos2_resume,
    "fanout": scenario_fanout,
    "will_session_end": scenario_will_session_end,
    "alias_in": scenario_alias_in,
    "alias_out": scenario_alias_out,
    "retained_expiry": scenario_retained_expiry,
    "shared_retained": scenario_shared_retained,
    "empty_id_persistent": scenario_empty_id_persistent,
    "slow_consumer": scenario_slow_consumer,
    "session_expiry": scenario_session_expiry,
    "will_retained": scenario_will_retained,
    "overlap": scenario_overlap,
    "qos2_dup": scenario_qos2_dup,
    "redeliver": scenario_redeliver,
    "receive_max": scenario_receive_max,
    "max_packet": scenario_max_packet,
    "properties": scenario_properties,
    "retained_many": scenario_retained_many,
    "keepalive": scenario_keepalive,
    "max_keepalive": scenario_max_keepalive,
    "burst": scenario_burst,
    "large": scenario_large,
    "takeover": scenario_takeover,
    "options": scenario_options,
    "expiry": scenario_expiry,
    "subid": scenario_subid,
    "assigned": scenario_assigned,
    "unsubscribe": scenario_unsubscribe,
    "will_delay": scenario_will_delay,
    "qos": scenario_qos,
    "retained": scenario_retained,
    "will": scenario_will,
    "shared": scenario_shared,
    "alias": scenario_alias,
    "cross_node": scenario_cross_node,
    "resume": scenario_resume,
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--host", default="127.0.0.1")
    ports = parser.add_mutually_exclusive_group(required=True)
    ports.add_argument("--port", type=int)
    ports.add_argument("--ports", help="comma-separated: each new client takes the next in turn")
    parser.add_argument("--transport", choices=["tcp", "websockets"], default="tcp")
    parser.add_argument("--path", default="/mqtt", help="WebSocket path")
    parser.add_argument("--tcp-port", type=int, help="the TCP port, for scenarios using both")
    parser.add_argument("--ws-port", type=int, help="the WebSocket port, for scenarios using both")
    parser.add_argument("--sub-port", type=int, help="another node's port, for cross_node")
    parser.add_argument("--version", choices=["31", "311", "5"], default="311")
    args = parser.parse_args()
    args.run = uuid.uuid4().hex[:10]
    # Shared by the copies of `args` a scenario makes, so that every client takes the next.
    args.port_cycle = None
    if args.ports:
        try:
            args.port_cycle = itertools.cycle([int(port) for port in args.ports.split(",")])
        except ValueError:
            parser.error(f"--ports: not a list of port numbers: {args.ports!r}")
    try:
        result = SCENARIOS[args.scenario](args)
    except Failure as failure:
        print(
            f"paho {args.scenario} ({args.transport}, MQTT {args.version}): {failure}",
            file=sys.stderr,
        )
        sys.exit(1)
    print(json.dumps(result, sort_keys=True, separators=(",", ":")))


if __name__ == "__main__":
    main()
