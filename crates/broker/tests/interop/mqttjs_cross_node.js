#!/usr/bin/env node
// Interop with MQTT.js (npm `mqtt`) across two nodes of a rallymq cluster, over TCP.
//
//   node mqttjs_cross_node.js PUB_URL SUB_URL VERSION   (URLs like mqtt://127.0.0.1:PORT;
//                                                        VERSION 4 or 5 for MQTT 3.1.1 or 5.0)
//
// A subscriber on SUB_URL subscribes at QoS 2; a publisher on PUB_URL sends QoS 0 probes until
// one crosses (the subscriber's node subscribes on NATS shortly after SUBACK), then five
// messages at each of QoS 0, 1 and 2, waiting for each QoS 1/2 flow to complete. Prints, as one
// line of JSON, the granted QoS and the [payload, qos] received per topic in arrival order; on
// a failure or after 15 s prints a clear message to stderr and exits with status 1.
'use strict';

const mqtt = require('mqtt');

const [pubUrl, subUrl, version] = process.argv.slice(2);
if (!pubUrl || !subUrl || !['4', '5'].includes(version)) {
  console.error('usage: node mqttjs_cross_node.js mqtt://HOST:PORT mqtt://HOST:PORT 4|5');
  process.exit(2);
}
const protocolVersion = Number(version);
const run = Math.random().toString(16).slice(2, 12);
const prefix = `interop/${run}/cross-node/`;
const clients = [];
const COUNT = 5;
// After the last expected message, how long to listen for duplicates.
const QUIET_MS = 400;

function fail(message) {
  console.error(`MQTT.js cross-node (protocol level ${protocolVersion}): ${message}`);
  for (const client of clients) client.end(true);
  process.exit(1);
}

const timer = setTimeout(() => fail('no result within 15s'), 15000);

function connect(name, url) {
  return new Promise((resolve, reject) => {
    const client = mqtt.connect(url, {
      protocolVersion,
      clientId: `${name}-${run}`,
      reconnectPeriod: 0,
      connectTimeout: 4000,
    });
    clients.push(client);
    client.once('connect', () => resolve(client));
    client.once('error', (error) => reject(new Error(`${name}: ${error.message}`)));
    client.once('close', () => reject(new Error(`${name}: connection closed`)));
  });
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function main() {
  const subscriber = await connect('sub', subUrl);
  const received = {};
  let probed = false;
  let lastAt = 0;
  subscriber.on('message', (topicName, payload, packet) => {
    const text = payload.toString();
    if (text === 'probe') {
      probed = true;
      return;
    }
    const key = topicName.startsWith(prefix) ? topicName.slice(prefix.length) : topicName;
    (received[key] = received[key] || []).push([text, packet.qos]);
    lastAt = Date.now();
  });
  const granted = await subscriber.subscribeAsync(`${prefix}#`, { qos: 2 });
  const publisher = await connect('pub', pubUrl);
  const probeUntil = Date.now() + 5000;
  while (!probed) {
    if (Date.now() > probeUntil) throw new Error('no probe crossed within 5s');
    await publisher.publishAsync(`${prefix}probe`, 'probe', { qos: 0 });
    await sleep(50);
  }
  for (const qos of [0, 1, 2]) {
    for (let i = 0; i < COUNT; i += 1) {
      await publisher.publishAsync(`${prefix}${qos}`, `${qos}-${i}`, { qos });
    }
  }
  const total = () => Object.values(received).reduce((n, list) => n + list.length, 0);
  while (total() < 3 * COUNT || Date.now() - lastAt < QUIET_MS) {
    await sleep(20);
  }
  await Promise.all([subscriber.endAsync(), publisher.endAsync()]);
  clearTimeout(timer);
  console.log(JSON.stringify({ granted: granted.map((g) => g.qos), received }));
}

main().catch((error) => fail(error.message));
