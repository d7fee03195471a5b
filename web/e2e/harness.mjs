// Helpers for the browser tests: build and start the broker (the `rallymq` command), Mosquitto,
// paho-mqtt peers, a static file server for web/, and headless Chromium through playwright-core.

import { execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

import { test } from 'node:test';

import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const WEB = path.resolve(HERE, '..');
export const ROOT = path.resolve(WEB, '..');

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Waits until `check()` returns a truthy value; throws with `what` after `timeout` ms. */
export async function until(what, check, timeout = 5000, every = 25) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await sleep(every);
  }
}

const cleanups = [];

/** Runs `cleanup` at the end of the current test, whatever happens (see `browserTest`). */
export const defer = (cleanup) => cleanups.push(cleanup);

async function runCleanups() {
  while (cleanups.length) {
    try {
      await cleanups.pop()();
    } catch (error) {
      console.error('cleanup failed:', error);
    }
  }
}

/** A test whose deferred cleanups run when it ends, passed or failed. */
export function browserTest(name, timeout, body) {
  test(name, { timeout }, async (t) => {
    try {
      await body(t);
    } finally {
      await runCleanups();
    }
  });
}

let targetDir = null;

/** `cargo build`s the broker command and the tennis simulator (once). */
export function build() {
  if (targetDir) return;
  const cargo = (args) =>
    execFileSync('cargo', args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 256 << 20 });
  // One invocation, so both share one feature resolution (two would rebuild the broker twice).
  cargo(['build', '--locked', '-p', 'rallymq', '-p', 'rallymq-examples', '--bin', 'rallymq', '--example', 'tennis']);
  targetDir = JSON.parse(cargo(['metadata', '--format-version', '1', '--no-deps', '--locked'])).target_directory;
}

export const binary = (name) => path.join(targetDir, 'debug', name);
export const example = (name) => path.join(targetDir, 'debug', 'examples', name);

/** A free TCP port on 127.0.0.1 (for a process that must keep its port across a restart). */
export async function freePort() {
  const server = net.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address();
  server.close();
  await once(server, 'close');
  return port;
}

async function waitForExit(child, timeout) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, 'exit');
  const timer = setTimeout(() => child.kill('SIGKILL'), timeout);
  await exited;
  clearTimeout(timer);
}

/**
 * Starts `rallymq broker --tcp TCP --ws WS` (port 0: a free one; `--wss` with `tls`) with `args`
 * besides, and reads the bound ports from its `listening: tcp://...` and `listening: ws://...`
 * (or `wss://`) log lines.
 */
export async function startBroker({ tcp = 0, ws = 0, sysInterval, tls, args: extra = [] } = {}) {
  // `tls: { cert, key }`: the WebSocket listener is wss, with that certificate.
  const wsKind = tls ? 'wss' : 'ws';
  const args = ['broker', '--tcp', `127.0.0.1:${tcp}`, `--${wsKind}`, `127.0.0.1:${ws}`, '--in-memory'];
  if (tls) args.push('--cert', tls.cert, '--key', tls.key);
  if (sysInterval !== undefined) args.push('--sys-interval-secs', String(sysInterval));
  args.push(...extra);
  const child = spawn(binary('rallymq'), args, {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, RUST_LOG: 'info', NO_COLOR: '1' },
  });
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
      const match = /listening: (tcp|wss?):\/\/127\.0\.0\.1:(\d+)/.exec(line);
      if (match) ports[match[1] === 'tcp' ? 'tcp' : 'ws'] = Number(match[2]);
      if (ports.tcp && ports.ws) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  child.removeAllListeners('exit');
  return {
    tcpPort: ports.tcp,
    wsPort: ports.ws,
    wsUrl: `${wsKind}://127.0.0.1:${ports.ws}/mqtt`,
    httpUrl: `${tls ? 'https' : 'http'}://127.0.0.1:${ports.ws}`,
    log: () => log,
    async stop() {
      child.kill('SIGTERM');
      await waitForExit(child, 8000);
    },
    /** Ends the broker as a crash does: SIGKILL, nothing said to its peers. */
    async kill() {
      child.kill('SIGKILL');
      await waitForExit(child, 8000);
    },
  };
}

/** [`startBroker`], stopped when the current `browserTest` ends. */
export async function testBroker(options) {
  const started = await startBroker(options);
  defer(() => started.stop());
  return started;
}

/** Starts Mosquitto with a WebSocket listener and a TCP one, anonymous access allowed. */
export async function startMosquitto() {
  const program = ['/usr/sbin/mosquitto', '/usr/bin/mosquitto'].find(existsSync) || 'mosquitto';
  const [ws, tcp] = [await freePort(), await freePort()];
  const dir = mkdtempSync(path.join(os.tmpdir(), 'rallymq-mosquitto-'));
  const conf = path.join(dir, 'mosquitto.conf');
  writeFileSync(
    conf,
    [
      'persistence false',
      'log_dest stderr',
      `listener ${ws} 127.0.0.1`,
      'protocol websockets',
      'allow_anonymous true',
      `listener ${tcp} 127.0.0.1`,
      'allow_anonymous true',
      '',
    ].join('\n'),
  );
  const child = spawn(program, ['-c', conf], { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  child.stderr.on('data', (data) => (log += data));
  await until(`Mosquitto on ${ws} and ${tcp}:\n${log}`, async () => {
    if (child.exitCode !== null) throw new Error(`mosquitto exited: ${log}`);
    return (await reachable(ws)) && (await reachable(tcp));
  }, 10_000, 50);
  return {
    tcpPort: tcp,
    wsPort: ws,
    wsUrl: `ws://127.0.0.1:${ws}/mqtt`,
    async stop() {
      child.kill('SIGTERM');
      await waitForExit(child, 5000);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Whether something accepts TCP connections on 127.0.0.1:`port`. */
const reachable = (port) =>
  new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.on('connect', () => (socket.destroy(), resolve(true)));
    socket.on('error', () => resolve(false));
  });

/** Starts a nats-server with JetStream (Debian's package) on a free port, its store in a temporary directory. */
export async function startNats() {
  const program = ['/usr/sbin/nats-server', '/usr/bin/nats-server'].find(existsSync) || 'nats-server';
  const port = await freePort();
  const dir = mkdtempSync(path.join(os.tmpdir(), 'rallymq-nats-'));
  const child = spawn(program, ['-a', '127.0.0.1', '-p', String(port), '-js', '-sd', dir], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let log = '';
  child.stderr.on('data', (data) => (log += data));
  await until(`nats-server on ${port}:\n${log}`, async () => {
    if (child.exitCode !== null) throw new Error(`nats-server exited: ${log}`);
    return reachable(port);
  }, 10_000, 50);
  return {
    url: `nats://127.0.0.1:${port}`,
    async stop() {
      child.kill('SIGTERM');
      await waitForExit(child, 5000);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.mjs': 'text/javascript', '.css': 'text/css', '.json': 'application/json' };

/** Serves web/ over HTTP on a free port (for pages that must load while the broker is down). */
export async function startStaticServer() {
  const server = createServer((request, response) => {
    const url = new URL(request.url, 'http://localhost');
    let file = path.join(WEB, decodeURIComponent(url.pathname));
    if (file.endsWith(path.sep)) file = path.join(file, 'index.html');
    if (!file.startsWith(WEB + path.sep) || !existsSync(file)) {
      response.writeHead(404).end('not found');
      return;
    }
    response.writeHead(200, {
      'content-type': TYPES[path.extname(file)] || 'application/octet-stream',
      'cache-control': 'no-store',
    });
    response.end(readFileSync(file));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    stop: () => {
      const closed = new Promise((resolve) => server.close(resolve));
      server.closeAllConnections(); // keep-alive connections would hold close() open
      return closed;
    },
  };
}

/**
 * A paho-mqtt peer (paho_peer.py) over TCP. `sub`: `messages` collects what arrives on `filter`.
 * `pub`: `publish(message)` resolves when the QoS flow is complete.
 */
export async function paho(mode, port, filter = '', qos = 0) {
  const args = [path.join(HERE, 'paho_peer.py'), mode, '127.0.0.1', String(port)];
  if (mode === 'sub') args.push(filter, String(qos));
  const child = spawn(process.env.PYTHON || 'python3', args, { stdio: ['pipe', 'pipe', 'pipe'] });
  let errors = '';
  child.stderr.on('data', (data) => (errors += data));
  const lines = [];
  readline.createInterface({ input: child.stdout }).on('line', (line) => lines.push(JSON.parse(line)));
  await until(`paho ${mode} ready`, () => {
    if (lines.some((l) => l.ready)) return true;
    if (child.exitCode !== null) throw new Error(`paho_peer.py ${mode} exited: ${errors}`);
    return false;
  }, 10_000);
  let sent = 0;
  return {
    get messages() {
      return lines.filter((l) => l.topic !== undefined);
    },
    async publish(message) {
      sent += 1;
      const count = sent;
      child.stdin.write(JSON.stringify(message) + '\n');
      await until(`paho publish ${count} ${errors}`, () => lines.some((l) => l.done === count), 10_000, 5);
    },
    async stop() {
      child.stdin.end();
      await waitForExit(child, 5000);
    },
  };
}

/** Chromium flags: headless, no sandbox (root in CI), nothing that phones home. */
export const CHROMIUM_FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
];

/**
 * Launches Debian's Chromium (CHROMIUM overrides /usr/bin/chromium) with a fresh profile;
 * `ignoreHTTPSErrors` accepts self-signed certificates.
 * A missing browser is an error, never a skip.
 */
export async function launchBrowser({ ignoreHTTPSErrors = false } = {}) {
  const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
  if (!existsSync(executablePath)) {
    throw new Error(`no Chromium at ${executablePath}: run scripts/setup.sh (apt-get install -y chromium)`);
  }
  const userDataDir = mkdtempSync(path.join(os.tmpdir(), 'rallymq-chromium-'));
  // launchPersistentContext passes --user-data-dir itself: the fresh directory above.
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath,
    headless: true,
    args: CHROMIUM_FLAGS,
    // For pages of a test broker's self-signed certificate (wss tests).
    ignoreHTTPSErrors,
    timeout: 30_000,
  });
  return {
    context,
    async newPage(viewport) {
      const page = await context.newPage();
      if (viewport) await page.setViewportSize(viewport);
      page.on('pageerror', (error) => console.error(`page error: ${error.message}`));
      return page;
    },
    async close() {
      await context.close();
      rmSync(userDataDir, { recursive: true, force: true });
    },
  };
}
