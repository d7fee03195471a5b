// rallymq.js speaks standard MQTT: the same flows against Mosquitto's WebSocket listener.
// A missing Mosquitto fails these tests, never skips them (scripts/setup.sh installs it).
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { existsSync, mkdtempSync, writeFileSync, rmSync } from 'node:fs'
import { createServer, connect as tcpConnect } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import WebSocket from 'ws'
import { connect, text } from '../rallymq.js'
import { next, until, sleep } from './helpers.mjs'

const binary = ['/usr/sbin/mosquitto', '/usr/bin/mosquitto', '/usr/local/sbin/mosquitto'].find(existsSync)
const T = { timeout: 20000 }
let child, url, dir
const clients = []

const freePort = () =>
  new Promise(resolve => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address()
      s.close(() => resolve(port))
    })
  })

before(async () => {
  assert.ok(binary, 'mosquitto is not installed: run scripts/setup.sh (apt-get install mosquitto)')
  const port = await freePort()
  const tcp = await freePort() // Mosquitto 2.0 will not start with a WebSocket listener alone
  dir = mkdtempSync(join(tmpdir(), 'rallymq-js-mosquitto-'))
  const conf = join(dir, 'mosquitto.conf')
  writeFileSync(conf, `per_listener_settings false\npersistence false\nallow_anonymous true\nlistener ${tcp} 127.0.0.1\nlistener ${port} 127.0.0.1\nprotocol websockets\n`)
  child = spawn(binary, ['-c', conf], { stdio: 'ignore' })
  await until(
    () =>
      new Promise(resolve => {
        const s = tcpConnect(port, '127.0.0.1', () => (s.destroy(), resolve(true)))
        s.on('error', () => resolve(false))
      }),
    10000,
    'mosquitto listening',
  )
  url = `ws://127.0.0.1:${port}/mqtt`
})

after(async () => {
  for (const c of clients) await c.end()
  if (child) {
    child.kill('SIGKILL')
    await new Promise(r => (child.exitCode == null ? child.once('exit', r) : r()))
  }
  if (dir) rmSync(dir, { recursive: true, force: true })
})

const open = async extra => {
  const c = await connect(url, { WebSocket, reconnect: false, ...extra })
  clients.push(c)
  return c
}

for (const protocolVersion of [4, 5]) {
  test(`Mosquitto v${protocolVersion}: QoS 0, 1 and 2 both ways, retained`, T, async () => {
    const sub = await open({ protocolVersion })
    const pub = await open({ protocolVersion })
    const got = []
    sub.on('message', (topic, payload, packet) => got.push([topic, text(payload), packet.qos, packet.retain]))
    await pub.publish(`js/v${protocolVersion}/retained`, 'kept', { qos: 1, retain: true })
    assert.deepEqual(await sub.subscribe(`js/v${protocolVersion}/#`, { qos: 2 }), [2])
    await until(() => got.length, 5000, 'the retained message')
    for (const qos of [0, 1, 2]) await pub.publish(`js/v${protocolVersion}/${qos}`, `q${qos}`, { qos })
    await until(() => got.length >= 4, 5000, 'four messages')
    await sleep(200)
    assert.deepEqual(got, [
      [`js/v${protocolVersion}/retained`, 'kept', 1, true],
      [`js/v${protocolVersion}/0`, 'q0', 0, false],
      [`js/v${protocolVersion}/1`, 'q1', 1, false],
      [`js/v${protocolVersion}/2`, 'q2', 2, false],
    ])
    await pub.publish(`js/v${protocolVersion}/retained`, '', { qos: 1, retain: true })
  })
}

test('Mosquitto v5: properties and a user property round trip', T, async () => {
  const c = await open({ sessionExpiry: 10 })
  const message = next(c, 'message')
  await c.subscribe('js/props', { qos: 1, nl: false })
  await c.publish('js/props', { ok: true }, {
    qos: 1,
    properties: { contentType: 'application/json', responseTopic: 'js/reply', correlationData: Uint8Array.of(1, 2), userProperties: [['k', 'v']] },
  })
  const [, payload, packet] = await message
  assert.equal(text(payload), '{"ok":true}')
  assert.equal(packet.properties.contentType, 'application/json')
  assert.equal(packet.properties.responseTopic, 'js/reply')
  assert.deepEqual([...packet.properties.correlationData], [1, 2])
  assert.deepEqual(packet.properties.userProperties, [['k', 'v']])
})
