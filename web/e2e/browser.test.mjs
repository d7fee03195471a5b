// Browser tests: rallymq.js and the demos in headless Chromium (Debian's chromium package,
// driven by playwright-core) against the real broker (the `rallymq` command), paho-mqtt and
// Mosquitto. Run with `npm test` in web/e2e (scripts/test.sh does).

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { after, before } from 'node:test';

import {
  browserTest,
  build,
  defer,
  example,
  freePort,
  launchBrowser,
  paho,
  sleep,
  startBroker,
  startMosquitto,
  startStaticServer,
  testBroker,
  until,
} from './harness.mjs';

let browser;
let web;

before(async () => {
  build();
  browser = await launchBrowser();
  web = await startStaticServer();
});

after(async () => {
  await browser?.close();
  await web?.stop();
});

async function page(viewport) {
  const opened = await browser.newPage(viewport);
  defer(() => opened.close());
  return opened;
}

async function pahoPeer(...args) {
  const peer = await paho(...args);
  defer(() => peer.stop());
  return peer;
}

/** A blank page from web/e2e/harness.html with the client module as window.mqtt. */
async function harnessPage() {
  const opened = await page();
  await opened.goto(`${web.url}/e2e/harness.html`);
  await opened.waitForSelector('body[data-ready]', { state: 'attached', timeout: 5000 });
  return opened;
}

function score(fields = {}) {
  return {
    players: ['A. Ashe', 'B. Borg'],
    sets: [[0, 0]],
    points: ['0', '0'],
    serving: 0,
    status: 'live',
    winner: null,
    ...fields,
  };
}

/** What a tennis card shows: names, games per set per player, points, status. */
function cardState(pageHandle, id) {
  return pageHandle.evaluate((id) => {
    const card = document.querySelector(`[data-match-id="${id}"]`);
    if (!card) return null;
    const rows = [...card.querySelectorAll('.player')];
    return {
      names: rows.map((row) => row.querySelector('.name').textContent),
      games: rows.map((row) => [...row.querySelectorAll('.set')].map((cell) => Number(cell.textContent))),
      points: rows.map((row) => row.querySelector('.points').textContent),
      status: card.dataset.status,
    };
  }, id);
}

/** The card state a score message should produce. */
function expectedCard(message) {
  return {
    names: message.players,
    games: [0, 1].map((player) => message.sets.map((set) => set[player])),
    points: message.points,
    status: message.status,
  };
}

async function waitForCard(pageHandle, id, message, timeout) {
  const expected = expectedCard(message);
  let last = null;
  try {
    await until(`card ${id}`, async () => {
      last = await cardState(pageHandle, id);
      return JSON.stringify(last) === JSON.stringify(expected);
    }, timeout, 10);
  } catch (error) {
    assert.deepEqual(last, expected, `${error.message}: card ${id} within ${timeout} ms`);
  }
}

browserTest('the tennis page shows a match within 1 s of its first publish and follows its updates', 120_000, async (t) => {
  const server = await testBroker();
  const tennis = await page();
  const publisher = await pahoPeer('pub', server.tcpPort);
  await tennis.goto(`${server.httpUrl}/tennis/`);
  await tennis.waitForSelector('body[data-subscribed]', { timeout: 5000 });

  const first = score({ players: ['S. First', 'T. Second'] });
  // The one-second budget runs from before the publish.
  const shown = tennis.waitForSelector('[data-match-id="e2e-1"]', { timeout: 1000 });
  const started = Date.now();
  await publisher.publish({ topic: 'tennis/e2e-1/score', payload: JSON.stringify(first), qos: 1, retain: true });
  await shown;
  const elapsed = Date.now() - started;
  t.diagnostic(`the card appeared ${elapsed} ms after the publish started`);
  await waitForCard(tennis, 'e2e-1', first, 1000 - Math.min(elapsed, 999));

  const updates = [
    { points: ['15', '0'] },
    { points: ['40', '40'] },
    { points: ['AD', '40'] },
    { sets: [[1, 0]], points: ['0', '0'], serving: 1 },
    { sets: [[6, 4], [6, 6]], points: ['5', '3'] },
    { sets: [[6, 4], [7, 6]], status: 'finished', winner: 0 },
  ];
  for (const update of updates) {
    const message = score({ players: first.players, ...update });
    await publisher.publish({ topic: 'tennis/e2e-1/score', payload: JSON.stringify(message), qos: 1, retain: true });
    await waitForCard(tennis, 'e2e-1', message, 1000);
  }
  const winner = await tennis.locator('[data-match-id="e2e-1"] .player.winner .name').textContent();
  assert.equal(winner, 'S. First');

  // The simulator: three matches, fast; the page follows each to its last message.
  const scores = await pahoPeer('sub', server.tcpPort, 'tennis/+/score', 1);
  const simulator = spawn(
    example('tennis'),
    ['--broker', `mqtt://127.0.0.1:${server.tcpPort}`, '--matches', '3', '--speed', '200', '--once', '--seed', '8'],
    { stdio: ['ignore', 'ignore', 'inherit'] },
  );
  defer(() => simulator.exitCode === null && simulator.kill('SIGKILL'));
  await tennis.waitForSelector('[data-match-id="court-3"]', { timeout: 5000 });
  const timeout = setTimeout(() => simulator.kill('SIGKILL'), 60_000);
  const [code, signal] = await once(simulator, 'exit');
  clearTimeout(timeout);
  assert.equal(signal, null, 'the simulator ends its matches within a minute');
  assert.equal(code, 0, 'the simulator ends its matches and exits');
  for (const court of ['court-1', 'court-2', 'court-3']) {
    const messages = scores.messages.filter((m) => m.topic === `tennis/${court}/score`);
    assert.ok(messages.length > 48, `${court}: a match of at least 48 points, got ${messages.length} messages`);
    const last = JSON.parse(messages.at(-1).payload);
    assert.equal(last.status, 'finished');
    await waitForCard(tennis, court, last, 2000);
  }
});

/** The page and paho exchange QoS 1 and 2 messages both ways; each arrives exactly once. */
async function exchangeWithPaho(url, tcpPort, version, label) {
  const browserPage = await harnessPage();
  const subscriber = await pahoPeer('sub', tcpPort, `e2e/${label}/page/#`, 2);
  await browserPage.evaluate(async ({ url, version, label }) => {
    window.got = [];
    const client = await window.mqtt.connect(url, { protocolVersion: version, clientId: `e2e-${label}-v${version}` });
    window.client = client;
    client.on('message', (topic, payload, packet) =>
      window.got.push({ topic, payload: window.mqtt.text(payload), qos: packet.qos }));
    await client.subscribe(`e2e/${label}/paho/#`, { qos: 2 });
    await client.publish(`e2e/${label}/page/1`, 'QoS 1 from the page', { qos: 1 });
    await client.publish(`e2e/${label}/page/2`, 'QoS 2 from the page', { qos: 2 });
  }, { url, version, label });
  const publisher = await pahoPeer('pub', tcpPort);
  await publisher.publish({ topic: `e2e/${label}/paho/1`, payload: 'QoS 1 from paho', qos: 1 });
  await publisher.publish({ topic: `e2e/${label}/paho/2`, payload: 'QoS 2 from paho', qos: 2 });

  await until('both sides receive', async () =>
    subscriber.messages.length >= 2 && (await browserPage.evaluate(() => window.got.length)) >= 2, 5000);
  await sleep(500); // a duplicate would have arrived by now
  const byTopic = (a, b) => a.topic.localeCompare(b.topic);
  assert.deepEqual(
    subscriber.messages.map(({ topic, payload, qos }) => ({ topic, payload, qos })).sort(byTopic),
    [
      { topic: `e2e/${label}/page/1`, payload: 'QoS 1 from the page', qos: 1 },
      { topic: `e2e/${label}/page/2`, payload: 'QoS 2 from the page', qos: 2 },
    ],
    `MQTT ${version}: paho receives each of the page's messages exactly once`,
  );
  assert.deepEqual(
    (await browserPage.evaluate(() => window.got)).sort(byTopic),
    [
      { topic: `e2e/${label}/paho/1`, payload: 'QoS 1 from paho', qos: 1 },
      { topic: `e2e/${label}/paho/2`, payload: 'QoS 2 from paho', qos: 2 },
    ],
    `MQTT ${version}: the page receives each of paho's messages exactly once`,
  );
  await browserPage.evaluate(() => window.client.end());
}

browserTest('a page publishes QoS 1 and QoS 2 and a paho-mqtt subscriber receives each exactly once, and the reverse', 60_000, async () => {
  const server = await testBroker();
  for (const version of [5, 4]) await exchangeWithPaho(server.wsUrl, server.tcpPort, version, 'rallymq');
});

browserTest('the client works against Mosquitto\'s WebSocket listener', 60_000, async () => {
  const mosquitto = await startMosquitto();
  defer(() => mosquitto.stop());
  for (const version of [5, 4]) await exchangeWithPaho(mosquitto.wsUrl, mosquitto.tcpPort, version, 'mosquitto');
});

browserTest('the broker is restarted: the page reconnects and resubscribes by itself and gets the next update', 60_000, async () => {
  let server = await startBroker();
  const { tcpPort, wsPort } = server;
  defer(() => server.stop());
  const tennis = await page();
  await tennis.goto(`${server.httpUrl}/tennis/`);
  await tennis.waitForSelector('body[data-subscribed]', { timeout: 5000 });
  let publisher = await paho('pub', tcpPort);
  const before = score({ points: ['15', '0'] });
  await publisher.publish({ topic: 'tennis/e2e-restart/score', payload: JSON.stringify(before), qos: 1 });
  await waitForCard(tennis, 'e2e-restart', before, 1000);
  await publisher.stop();

  await server.stop();
  await tennis.waitForSelector('#status:not([data-state="connected"])', { timeout: 5000 });
  server = await startBroker({ tcp: tcpPort, ws: wsPort });
  await tennis.waitForSelector('#status[data-state="connected"]', { timeout: 20_000 });

  // Not retained: only a live subscription gets it. Sent again until the page's SUBSCRIBE,
  // which follows its CONNACK, has been processed.
  publisher = await paho('pub', tcpPort);
  defer(() => publisher.stop());
  const next = score({ points: ['30', '0'] });
  await until('the update after the restart', async () => {
    await publisher.publish({ topic: 'tennis/e2e-restart/score', payload: JSON.stringify(next), qos: 1 });
    const state = await cardState(tennis, 'e2e-restart');
    return JSON.stringify(state) === JSON.stringify(expectedCard(next));
  }, 5000, 200);
});

browserTest('with the broker down, a page publishes at QoS 1, is reloaded, the broker starts: the message is delivered, once', 60_000, async () => {
  const [tcpPort, wsPort] = [await freePort(), await freePort()];
  const url = `ws://127.0.0.1:${wsPort}/mqtt`;
  const options = { clientId: 'e2e-offline', persistence: true, reconnect: { min: 200, max: 1000 } };
  const offline = await harnessPage();
  await offline.evaluate(({ url, options }) => {
    const client = window.mqtt.createClient(url, options);
    client.on('error', () => {}); // connection refused, over and over
    client.publish('e2e/offline', 'kept across a reload', { qos: 1 }).catch(() => {});
  }, { url, options });
  const key = `rallymq:${url}:e2e-offline`;
  await until('the message in localStorage', () =>
    offline.evaluate((key) => (localStorage.getItem(key) || '').includes('e2e/offline'), key), 2000);
  await offline.reload();
  await offline.waitForSelector('body[data-ready]', { state: 'attached', timeout: 5000 });

  const server = await testBroker({ tcp: tcpPort, ws: wsPort });
  const subscriber = await pahoPeer('sub', tcpPort, 'e2e/offline', 1);
  // The reloaded page has only what it stored: a client with the same URL and id sends it.
  const connectAgain = () => offline.evaluate(({ url, options }) => new Promise((resolve) => {
    const client = window.mqtt.createClient(url, options);
    client.once('connect', () => resolve());
  }), { url, options });
  await connectAgain();
  await until('the message at the subscriber', () => subscriber.messages.length > 0, 10_000);
  await sleep(1000);
  // And once only: a second reload finds nothing left to send.
  await offline.reload();
  await offline.waitForSelector('body[data-ready]', { state: 'attached', timeout: 5000 });
  await connectAgain();
  await sleep(1000);
  assert.deepEqual(
    subscriber.messages.map(({ topic, payload }) => ({ topic, payload })),
    [{ topic: 'e2e/offline', payload: 'kept across a reload' }],
  );
  assert.ok(server.tcpPort === tcpPort);
});

browserTest('the tennis page at a 390x844 viewport has no horizontal scroll', 30_000, async () => {
  const server = await testBroker();
  const publisher = await pahoPeer('pub', server.tcpPort);
  const matches = [
    score({ players: ['M. Navratilova-Longname-Hyphenated', 'G. Sabatini de la Cruz y Montenegro'], sets: [[7, 6], [6, 7], [6, 6]], points: ['10', '11'] }),
    score({ players: ['A. B', 'C. D'], sets: [[6, 4], [3, 6], [7, 5], [6, 7], [10, 9]], points: ['AD', '40'] }),
    score({ players: ['Supercalifragilisticexpialidocious', 'X'], status: 'finished', winner: 0, sets: [[6, 0], [6, 0]] }),
  ];
  for (const [index, message] of matches.entries()) {
    await publisher.publish({ topic: `tennis/phone-${index}/score`, payload: JSON.stringify(message), qos: 1, retain: true });
  }
  const phone = await page({ width: 390, height: 844 });
  await phone.goto(`${server.httpUrl}/tennis/`);
  await phone.waitForSelector('[data-match-id="phone-2"]', { timeout: 5000 });
  const layout = await phone.evaluate(() => ({
    innerWidth: window.innerWidth,
    scrollWidth: document.documentElement.scrollWidth,
    bodyScrollWidth: document.body.scrollWidth,
    widest: Math.max(...[...document.querySelectorAll('body *')].map((el) => el.getBoundingClientRect().right)),
  }));
  assert.equal(layout.innerWidth, 390);
  assert.ok(layout.scrollWidth <= 390 && layout.bodyScrollWidth <= 390, JSON.stringify(layout));
  assert.ok(layout.widest <= 390, `an element reaches past the right edge: ${JSON.stringify(layout)}`);
  for (const path of ['/', '/dashboard/']) {
    await phone.goto(`${server.httpUrl}${path}`);
    const width = await phone.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(width <= 390, `${path} scrolls sideways at 390 px: ${width}`);
  }
});

browserTest('the dashboard shows clients, message rates, uptime and version from $SYS', 30_000, async () => {
  const server = await testBroker({ sysInterval: 1 });
  const dashboard = await page();
  await dashboard.goto(`${server.httpUrl}/dashboard/`);
  await dashboard.waitForFunction(() => /^\d+\.\d+\.\d+/.test(document.getElementById('version').textContent), null, { timeout: 5000 });
  await dashboard.waitForFunction(() => Number(document.getElementById('clients').textContent) >= 1, null, { timeout: 5000 });
  await dashboard.waitForFunction(() => /\d+s$/.test(document.getElementById('uptime').textContent), null, { timeout: 5000 });
  const publisher = await pahoPeer('pub', server.tcpPort);
  for (let i = 0; i < 20; i++) await publisher.publish({ topic: 'load/x', payload: String(i), qos: 1 });
  await dashboard.waitForFunction(() => Number(document.getElementById('rate-in').textContent) > 0, null, { timeout: 5000 });
  const painted = await dashboard.evaluate(() => {
    const canvas = document.querySelector('#plot-in canvas');
    const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    let opaque = 0;
    for (let i = 3; i < pixels.length; i += 4) opaque += pixels[i] > 0;
    return opaque;
  });
  assert.ok(painted > 100, `the plot is drawn (${painted} pixels)`);
});

browserTest('the index console connects, subscribes, publishes and shows the message', 30_000, async () => {
  const server = await testBroker();
  const index = await page();
  await index.goto(`${server.httpUrl}/`);
  assert.ok(await index.locator('a[href="tennis/"]').count());
  assert.ok(await index.locator('a[href="dashboard/"]').count());
  await index.click('#connect');
  await index.waitForSelector('#state[data-state="connected"]', { timeout: 5000 });
  await index.fill('#filter', 'console/#');
  await index.click('#subscribe-form button[type="submit"]');
  await index.waitForSelector('#log li[data-kind="info"]', { timeout: 5000 });
  await index.fill('#topic', 'console/hello');
  await index.fill('#payload', 'hello from the console');
  await index.click('#publish-form button[type="submit"]');
  await index.waitForSelector('#log li[data-kind="in"]:has-text("hello from the console")', { timeout: 5000 });
});
