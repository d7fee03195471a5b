#!/usr/bin/env node
// Topic aliases from the broker to MQTT.js (npm `mqtt`) over WebSockets, against a broker: ours
// or Mosquitto.
//
//   node mqttjs_aliases.js URL [PUB_URL]    (URLs like ws://127.0.0.1:PORT/mqtt)
//
// An MQTT 5 subscriber (on URL) announcing Topic Alias Maximum 10 receives QoS 1 messages on
// three topics from a publisher (on PUB_URL, another node of a cluster, if given; else on URL). Prints one line of JSON: the topics as MQTT.js resolved them (after the run's
// prefix), and how the broker used aliases: PUBLISHes that set one (topic and alias), that
// came on one alone (empty topic), and the highest alias. On a failure or after 5 s prints a
// clear message to stderr and exits with status 1.
'use strict';

const mqtt = require('mqtt');

const [url, pubUrl = url] = process.argv.slice(2);
if (!url) {
  console.error('usage: node mqttjs_aliases.js ws://HOST:PORT/mqtt [ws://HOST:PORT/mqtt]');
  process.exit(2);
}
const run = Math.random().toString(16).slice(2, 12);
const prefix = `interop/${run}/mqttjs-aliases/`;
const topics = ['court/1/score', 'court/2/score', 'court/1/score', 'court/3/score',
  'court/2/score', 'court/1/score', 'court/3/score', 'court/1/score'];
const clients = [];

function fail(message) {
  console.error(`MQTT.js topic aliases (${url}): ${message}`);
  for (const client of clients) client.end(true);
  process.exit(1);
}

const timer = setTimeout(() => fail('no result within 5s'), 5000);

function connect(name, to, properties) {
  return new Promise((resolve, reject) => {
    const client = mqtt.connect(to, {
      protocolVersion: 5,
      clientId: `${name}-${run}`,
      reconnectPeriod: 0,
      connectTimeout: 4000,
      properties,
    });
    clients.push(client);
    client.once('connect', () => resolve(client));
    client.once('error', (error) => reject(new Error(`${name}: ${error.message}`)));
    client.once('close', () => reject(new Error(`${name}: connection closed`)));
  });
}

async function main() {
  const subscriber = await connect('sub', url, { topicAliasMaximum: 10 });
  const publisher = await connect('pub', pubUrl, {});
  const use = { set: 0, alone: 0, highest: 0 };
  const received = [];
  const all = new Promise((resolve) => {
    subscriber.on('message', (topic, payload, packet) => {
      const alias = packet.properties?.topicAlias;
      if (alias !== undefined) {
        use.highest = Math.max(use.highest, alias);
        if (packet.topic.length === 0) use.alone += 1;
        else use.set += 1;
      }
      received.push(topic.startsWith(prefix) ? topic.slice(prefix.length) : topic);
      if (received.length === topics.length) resolve();
    });
  });
  await subscriber.subscribeAsync(`${prefix}#`, { qos: 1 });
  for (const [i, topic] of topics.entries()) {
    await publisher.publishAsync(prefix + topic, String(i), { qos: 1 });
  }
  await all;
  await Promise.all([subscriber.endAsync(), publisher.endAsync()]);
  clearTimeout(timer);
  console.log(JSON.stringify({ topics: received, ...use }));
}

main().catch((error) => fail(error.message));
