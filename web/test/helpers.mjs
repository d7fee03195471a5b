// Shared by the Node tests: the real broker as a child process, a scripted fake broker, waits.
import { spawn, execFileSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { WebSocketServer } from 'ws'
import { decode, encode } from '../rallymq.js'

const root = fileURLToPath(new URL('../..', import.meta.url))
let binary

/** The rallymq executable: $RALLYMQ_BIN, or built once with cargo (honours CARGO_TARGET_DIR). */
export function brokerBinary() {
  if (binary) return binary
  if (process.env.RALLYMQ_BIN) return (binary = process.env.RALLYMQ_BIN)
  const out = execFileSync('cargo', ['build', '-q', '--locked', '-p', 'rallymq', '--message-format=json-render-diagnostics'], {
    cwd: root,
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
    maxBuffer: 64 << 20,
  })
  for (const line of out.split('\n')) {
    if (!line.startsWith('{')) continue
    const msg = JSON.parse(line)
    if (msg.reason == 'compiler-artifact' && msg.target?.name == 'rallymq' && msg.executable) binary = msg.executable
  }
  if (!binary) throw new Error('cargo build -p rallymq gave no rallymq executable')
  return binary
}

/** Starts the broker (WebSockets on `port`, 0 for any); resolves once it logs its ws:// address. */
export function startBroker(port = 0, timeout = 15000) {
  const child = spawn(brokerBinary(), ['broker', '--tcp', '127.0.0.1:0', '--ws', `127.0.0.1:${port}`, '--sys-interval-secs', '0', '--in-memory'], {
    cwd: root,
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, RUST_LOG: 'info' },
  })
  let log = ''
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => (child.kill('SIGKILL'), reject(new Error('broker did not start:\n' + log))), timeout)
    child.on('exit', code => reject(new Error(`broker exited (${code}):\n${log}`)))
    child.stderr.setEncoding('utf8')
    child.stderr.on('data', chunk => {
      log += chunk
      const m = /listening: ws:\/\/([\d.]+):(\d+)(\/\S*)/.exec(log)
      if (!m) return
      clearTimeout(timer)
      child.stderr.removeAllListeners('data')
      child.stderr.resume()
      const exited = new Promise(r => child.once('exit', r))
      resolve({
        port: +m[2],
        url: `ws://${m[1]}:${m[2]}/mqtt`,
        async stop() {
          if (child.exitCode == null) child.kill('SIGKILL')
          await exited
        },
      })
    })
  })
}

/** Resolves with the arguments of the next `event` from `emitter` (rejects after `ms`). */
export function next(emitter, event, ms = 10000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => (emitter.off(event, on), reject(new Error(`no ${event} within ${ms} ms`))), ms)
    const on = (...args) => {
      clearTimeout(timer)
      emitter.off(event, on)
      resolve(args)
    }
    emitter.on(event, on)
  })
}

export const sleep = ms => new Promise(r => setTimeout(r, ms))

/** Polls `check` until it returns a truthy value. */
export async function until(check, ms = 10000, what = 'condition') {
  const end = Date.now() + ms
  for (;;) {
    const value = await check()
    if (value) return value
    if (Date.now() > end) throw new Error(`${what} not met within ${ms} ms`)
    await sleep(20)
  }
}

/** A Storage-like object over a Map, counting writes. */
export class FakeStorage {
  constructor() {
    this.map = new Map()
    this.writes = 0
  }
  getItem(key) {
    return this.map.has(key) ? this.map.get(key) : null
  }
  setItem(key, value) {
    this.writes++
    this.map.set(key, String(value))
  }
  removeItem(key) {
    this.writes++
    this.map.delete(key)
  }
}

/**
 * A scripted MQTT-over-WebSocket peer: each accepted connection is handed to the test as a
 * `Peer` with `next()` (the next decoded packet) and `send(packet)`.
 */
export async function fakeBroker(version = 5) {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, handleProtocols: () => 'mqtt' })
  await new Promise(r => wss.once('listening', r))
  const waiting = []
  const peers = []
  wss.on('connection', ws => {
    const peer = new Peer(ws, version)
    const w = waiting.shift()
    w ? w(peer) : peers.push(peer)
  })
  return {
    url: `ws://127.0.0.1:${wss.address().port}/mqtt`,
    /** The next connection. */
    accept(ms = 10000) {
      if (peers.length) return Promise.resolve(peers.shift())
      return new Promise((resolve, reject) => {
        const w = p => (clearTimeout(timer), resolve(p))
        const timer = setTimeout(() => {
          waiting.splice(waiting.indexOf(w) >>> 0, 1)
          reject(new Error('no connection'))
        }, ms)
        waiting.push(w)
      })
    },
    close() {
      for (const c of wss.clients) c.terminate()
      return new Promise(r => wss.close(r))
    },
  }
}

class Peer {
  constructor(ws, version) {
    this.ws = ws
    this.v = version
    this.buf = Buffer.alloc(0)
    this.packets = []
    this.waiters = []
    this.closed = new Promise(r => ws.once('close', r))
    ws.on('message', data => {
      this.buf = Buffer.concat([this.buf, data])
      for (let r; (r = decode(this.buf, this.v)); ) {
        this.buf = this.buf.subarray(r[1])
        const w = this.waiters.shift()
        w ? w(r[0]) : this.packets.push(r[0])
      }
    })
  }
  next(ms = 10000) {
    if (this.packets.length) return Promise.resolve(this.packets.shift())
    return new Promise((resolve, reject) => {
      const w = p => (clearTimeout(timer), resolve(p))
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter(x => x != w)
        reject(new Error('no packet within ' + ms + ' ms'))
      }, ms)
      this.waiters.push(w)
    })
  }
  /** Skips PINGREQs (answering them) until another packet. */
  async expect(type, ms) {
    for (;;) {
      const p = await this.next(ms)
      if (p.type == 'pingreq') {
        this.send({ type: 'pingresp' })
        continue
      }
      if (p.type != type) throw new Error(`expected ${type}, got ${JSON.stringify(p)}`)
      return p
    }
  }
  send(packet) {
    this.ws.send(packet instanceof Uint8Array ? packet : encode(packet, this.v))
  }
  async connack(sessionPresent = false, properties = {}) {
    const connect = await this.expect('connect')
    this.send({ type: 'connack', sessionPresent, code: 0, properties })
    return connect
  }
  drop() {
    this.ws.terminate()
  }
}
