// Browser tests of a secured broker: a page served over https by the broker itself connects
// over wss with a JSON Web Token from a password function, is refused without one, is
// disconnected when its token expires and reconnects with a fresh one; Mosquitto's client and
// the page share the broker. Headless Chromium (Debian's chromium) via playwright-core.

import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { after, before, test } from 'node:test';

import { binary, build, launchBrowser, until } from './harness.mjs';

// 32 bytes: the shortest HS256 secret the broker takes (RFC 7518 §3.2).
const SECRET = 'e2e-secret-e2e-secret-e2e-secret';

let browser;
let dir;

before(async () => {
  build();
  dir = mkdtempSync(path.join(os.tmpdir(), 'rallymq-e2e-security-'));
  // A self-signed certificate for 127.0.0.1; the browser context is told to accept it.
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', path.join(dir, 'key.pem'), '-out', path.join(dir, 'cert.pem'), '-days', '1',
    '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1',
  ], { stdio: ['ignore', 'ignore', 'pipe'] });
  writeFileSync(path.join(dir, 'jwt.key'), SECRET);
  browser = await launchBrowser({ ignoreHTTPSErrors: true });
});

after(async () => {
  await browser?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const base64url = (text) => Buffer.from(text).toString('base64url');

/** An HS256 token for `sub`, valid for `seconds`. */
function token(sub, seconds) {
  const header = base64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const claims = base64url(JSON.stringify({ sub, exp: Math.floor(Date.now() / 1000) + seconds }));
  const signature = createHmac('sha256', SECRET).update(`${header}.${claims}`).digest('base64url');
  return `${header}.${claims}.${signature}`;
}

/** `rallymq broker` with a wss listener and tokens required, on free ports. */
async function startSecureBroker() {
  const child = spawn(binary('rallymq'), [
    'broker', '--in-memory', '--tcp', '127.0.0.1:0', '--wss', '127.0.0.1:0',
    '--cert', path.join(dir, 'cert.pem'), '--key', path.join(dir, 'key.pem'),
    '--jwt-key', path.join(dir, 'jwt.key'),
  ], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, RUST_LOG: 'info', NO_COLOR: '1' } });
  let log = '';
  const ports = {};
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the broker did not start in 10 s:\n${log}`)), 10_000);
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`the broker exited (${code}):\n${log}`));
    });
    readline.createInterface({ input: child.stderr }).on('line', (line) => {
      log += line + '\n';
      const match = /listening: (tcp|wss):\/\/127\.0\.0\.1:(\d+)/.exec(line);
      if (match) ports[match[1]] = Number(match[2]);
      if (ports.tcp && ports.wss) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  child.removeAllListeners('exit');
  return {
    tcpPort: ports.tcp,
    origin: `https://127.0.0.1:${ports.wss}`,
    log: () => log,
    async stop() {
      child.kill('SIGTERM');
      await new Promise((resolve) => (child.exitCode !== null ? resolve() : child.once('exit', resolve)));
    },
  };
}

/** mosquitto_pub over TCP with a token as the password (3.1.1: the user name must be the token's). */
function mosquittoPub(port, topic, message, password) {
  execFileSync('mosquitto_pub', [
    '-h', '127.0.0.1', '-p', String(port), '-q', '1', '-t', topic, '-m', message, '-u', 'publisher', '-P', password,
  ], { stdio: ['ignore', 'ignore', 'pipe'], timeout: 10_000 });
}

test('a page served over https connects over wss with a token, and reconnects with a fresh one when it expires', { timeout: 60_000 }, async () => {
  const broker = await startSecureBroker();
  const page = await browser.newPage();
  try {
    let issued = 0;
    // The page's "token endpoint": each call mints a token valid for 3 s.
    await page.exposeFunction('fetchToken', () => {
      issued += 1;
      return token('viewer', 3);
    });
    await page.goto(`${broker.origin}/`);
    assert.equal(new URL(page.url()).protocol, 'https:');
    await page.evaluate(async () => {
      const mqtt = await import('/rallymq.js');
      const url = `wss://${location.host}/mqtt`;
      window.received = [];
      window.disconnects = [];
      window.refusal = null;
      try {
        await mqtt.connect(url, { reconnect: false });
      } catch (error) {
        window.refusal = error.code;
      }
      const client = mqtt.createClient(url, {
        password: () => window.fetchToken(),
        reconnect: { min: 100, max: 500 },
      });
      client.on('message', (topic, payload) => window.received.push(mqtt.text(payload)));
      client.on('disconnect', (packet) => window.disconnects.push(packet.code));
      await client.ready;
      await client.subscribe('scores/#', { qos: 1 });
      window.client = client;
    });
    // Without a token: refused, 0x87 Not authorized.
    assert.equal(await page.evaluate(() => window.refusal), 0x87);

    mosquittoPub(broker.tcpPort, 'scores/1', 'first', token('publisher', 60));
    await until('the first message', () => page.evaluate(() => window.received.includes('first')), 5000);

    // The token expires after 3 s: DISCONNECT 0xA0, then a reconnect asks for a new token.
    await until('the disconnect at expiry', () => page.evaluate(() => window.disconnects.includes(0xa0)), 8000);
    await until('a fresh token', () => issued >= 2, 5000);
    await until('connected again', () => page.evaluate(() => window.client.connected), 5000);
    mosquittoPub(broker.tcpPort, 'scores/1', 'second', token('publisher', 60));
    await until('the message after the reconnect', () => page.evaluate(() => window.received.includes('second')), 5000);
    assert.match(broker.log(), /credential expired/);
  } finally {
    await page.close();
    await broker.stop();
  }
});
