#!/usr/bin/env node
// Interop with MQTT.js (npm `mqtt`) over WebSockets, against a broker: ours or Mosquitto.
//
//   node mqttjs_ws.js URL VERSION [PUB_URL]   (URL like ws://127.0.0.1:PORT/mqtt; VERSION 3,
//                                              4 or 5 for MQTT 3.1, 3.1.1 or 5.0)
//
// Connects a subscriber (to URL) and a publisher (to PUB_URL, another node of a cluster, if
// given; else to URL), subscribes at QoS 1, publishes at QoS 1 and waits for
// the message; then publishes a retained message at QoS 2 and subscribes to it. Prints what it observed as one line of JSON; on a failure or after 5 s prints a
// clear message to stderr and exits with status 1.
'use strict';

const mqtt = require('mqtt');

const [url, version, pubUrl = url] = process.argv.slice(2);
if (!url || !['3', '4', '5'].includes(version)) {
  console.error('usage: node mqttjs_ws.js ws://HOST:PORT/mqtt 3|4|5 [ws://HOST:PORT/mqtt]');
  process.exit(2);
}
const protocolVersion = Number(version);
const run = Math.random().toString(16).slice(2, 12);
const topic = `interop/${run}/mqttjs`;
const clients = [];

function fail(message) {
  console.error(`MQTT.js (protocol level ${protocolVersion}, ${url}): ${message}`);
  for (const client of clients) client.end(true);
  process.exit(1);
}

const timer = setTimeout(() => fail('no result within 5s'), 5000);

function connect(name, to) {
  return new Promise((resolve, reject) => {
    const client = mqtt.connect(to, {
      protocolVersion,
      // MQTT 3.1 names its protocol MQIsdp (and asks for the WebSocket subprotocol mqttv3.1).
      protocolId: protocolVersion === 3 ? 'MQIsdp' : 'MQTT',
      clientId: `${name}-${run}`,
      reconnectPeriod: 0,
      connectTimeout: 4000,
    });
    clients.push(client);
    client.once('connect', (connack) => resolve({ client, connack }));
    client.once('error', (error) => reject(new Error(`${name}: ${error.message}`)));
    client.once('close', () => reject(new Error(`${name}: connection closed`)));
  });
}

async function main() {
  const { client: subscriber } = await connect('sub', url);
  const { client: publisher } = await connect('pub', pubUrl);
  const received = new Promise((resolve) => {
    subscriber.once('message', (topicName, payload, packet) =>
      resolve({ topic: topicName, payload: payload.toString(), qos: packet.qos, retain: packet.retain }),
    );
  });
  const granted = await subscriber.subscribeAsync(topic, { qos: 1 });
  await publisher.publishAsync(topic, 'hello from MQTT.js', { qos: 1 });
  const message = await received;
  message.topic = message.topic === topic ? 'TOPIC' : message.topic;

  // A retained message at QoS 2, sent to a subscription made afterwards with RETAIN set.
  const retainedTopic = `${topic}/retained`;
  await publisher.publishAsync(retainedTopic, 'kept', { qos: 2, retain: true });
  const retained = new Promise((resolve) => {
    subscriber.once('message', (topicName, payload, packet) =>
      resolve({ payload: payload.toString(), qos: packet.qos, retain: packet.retain }),
    );
  });
  await subscriber.subscribeAsync(retainedTopic, { qos: 2 });
  const kept = await retained;
  await publisher.publishAsync(retainedTopic, '', { qos: 1, retain: true });

  await Promise.all([subscriber.endAsync(), publisher.endAsync()]);
  clearTimeout(timer);
  console.log(JSON.stringify({ granted: granted.map((g) => g.qos), message, retained: kept }));
}

main().catch((error) => fail(error.message));
