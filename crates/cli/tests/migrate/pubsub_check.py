#!/usr/bin/env python3
"""The pub/sub check of crates/cli/tests/migrate.rs, run against Mosquitto started with a
mosquitto.conf and against rallymq started with what `rallymq migrate` made of it.

    pubsub_check.py --secure PORT --public PORT --run RUN

`--secure` is the listener with the password file (users alice and bob, password `secret`) and
ACL file `acl`; `--public` the one that lets anonymous clients in, with ACL file `acl_public`;
the broker's max_packet_size is 2048. Prints one line per check, `NAME RESULT`, and `done`.
Every wait is bounded; the test compares the two brokers' lines and checks them.
"""

import argparse
import queue
import sys

import paho.mqtt.client as mqtt

WAIT = 3.0  # seconds for what must happen
QUIET = 1.0  # seconds for what must not


class Client:
    def __init__(self, port, name, user=None, password=None):
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name,
                             protocol=mqtt.MQTTv311)
        if user is not None:
            self.c.username_pw_set(user, password)
        self.events = queue.Queue()
        self.c.on_connect = lambda c, u, f, rc, p: self.events.put(("connack", rc.value))
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.events.put(
            ("suback", [r.value for r in rcs]))
        self.c.on_publish = lambda c, u, mid, rc, p: self.events.put(("puback", mid))
        self.c.on_message = lambda c, u, m: self.events.put(
            ("message", (m.topic, m.payload.decode(errors="replace"), m.qos, int(m.retain))))
        self.c.on_disconnect = lambda c, u, f, rc, p: self.events.put(("disconnect", True))
        self.port = port

    def wait(self, kind, timeout=WAIT):
        """The next event of `kind` (others are dropped), or None after `timeout`."""
        try:
            while True:
                event, value = self.events.get(timeout=timeout)
                if event == kind:
                    return value
                if event == "disconnect" and kind != "disconnect":
                    return None
        except queue.Empty:
            return None

    def connect(self):
        """The CONNACK return code (paho's reason code value), or None."""
        self.c.connect("127.0.0.1", self.port, keepalive=30)
        self.c.loop_start()
        return self.wait("connack")

    def subscribe(self, topic, qos):
        self.c.subscribe(topic, qos)
        return self.wait("suback")

    def publish(self, topic, payload, qos, retain=False):
        self.c.publish(topic, payload, qos, retain)
        if qos > 0:
            return self.wait("puback") is not None
        return True

    def messages(self, timeout):
        """Every message that comes within `timeout`."""
        got = []
        while True:
            value = self.wait("message", timeout)
            if value is None:
                return got
            got.append(value)
            timeout = QUIET

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def show(value):
    return str(value).replace(" ", "")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--secure", type=int, required=True)
    parser.add_argument("--public", type=int, required=True)
    parser.add_argument("--run", required=True)
    args = parser.parse_args()
    run = args.run
    out = []

    def report(name, value):
        out.append(f"{name} {show(value)}")
        print(out[-1], flush=True)

    anon = Client(args.secure, f"anon-{run}")
    report("anonymous-on-secure-connack", anon.connect())
    anon.close()
    wrong = Client(args.secure, f"wrong-{run}", "alice", "wrong")
    report("wrong-password-connack", wrong.connect())
    wrong.close()

    alice = Client(args.secure, f"alice-{run}", "alice", "secret")
    bob = Client(args.secure, f"bob-{run}", "bob", "secret")
    report("alice-connack", alice.connect())
    report("bob-connack", bob.connect())
    report("alice-subscribe-test", alice.subscribe(f"test/{run}/#", 1))
    bob.publish(f"test/{run}/q0", "zero", 0)
    report("qos0", alice.messages(WAIT))
    report("qos1-acked", bob.publish(f"test/{run}/q1", "one", 1))
    report("qos1", alice.messages(WAIT))
    report("retained-acked", bob.publish(f"test/{run}/r", "kept", 1, retain=True))
    alice.messages(QUIET)
    late = Client(args.secure, f"late-{run}", "alice", "secret")
    late.connect()
    report("retained-subscribe", late.subscribe(f"test/{run}/r", 1))
    report("retained", late.messages(WAIT))
    late.publish(f"test/{run}/r", "", 1, retain=True)
    late.close()

    # alice may read private/#, bob may write it: alice's own publish is dropped.
    report("alice-subscribe-private", alice.subscribe(f"private/{run}/#", 1))
    report("bob-subscribe-private", bob.subscribe(f"private/{run}/#", 1))
    alice.publish(f"private/{run}/x", "from-alice", 1)
    bob.publish(f"private/{run}/x", "from-bob", 1)
    report("acl-private", alice.messages(WAIT))

    # max_packet_size 2048: the small message goes through, the big one is refused.
    big = Client(args.secure, f"big-{run}", "bob", "secret")
    big.connect()
    big.publish(f"test/{run}/size", "s" * 100, 1)
    big.c.publish(f"test/{run}/size", "b" * 4000, 1)
    report("big-publisher-disconnected", big.wait("disconnect", WAIT) is not None)
    big.c.loop_stop()
    report("max-packet-size", [(t, len(p)) for (t, p, _, _) in alice.messages(WAIT)])

    public = Client(args.public, f"public-{run}")
    report("anonymous-on-public-connack", public.connect())
    report("public-subscribe-public", public.subscribe(f"public/{run}/#", 0))
    report("public-subscribe-test", public.subscribe(f"test/{run}/#", 0))
    public.publish(f"public/{run}/x", "hello", 0)
    report("public", public.messages(WAIT))
    public.close()

    alice.close()
    bob.close()
    print("done", flush=True)


if __name__ == "__main__":
    sys.exit(main())
