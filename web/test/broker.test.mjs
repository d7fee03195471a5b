// End to end against the real broker (`rallymq broker`, built with cargo): connect with MQTT
// 3.1.1 and 5.0, publish and subscribe at QoS 0, 1 and 2, retained messages, reconnect after a
// broker restart, and persistence across a "page reload" with a fake localStorage.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import WebSocket from 'ws'
import { connect, createClient, text, json, decode } from '../rallymq.js'
import { startBroker, brokerBinary, next, until, sleep, FakeStorage } from './helpers.mjs'

const T = { timeout: 30000 }
let broker
const clients = []
const opts = extra => ({ WebSocket, reconnect: { min: 50, max: 300 }, ...extra })
const open = async (extra = {}) => {
  const c = await connect(broker.url, opts(extra))
  clients.push(c)
  return c
}

before(async () => {
  brokerBinary() // builds once, outside the per-test timeouts
  broker = await startBroker()
}, { timeout: 600000 })

after(async () => {
  for (const c of clients) await c.end()
  await broker?.stop()
})

for (const protocolVersion of [4, 5]) {
  test(`v${protocolVersion}: connect, then end`, T, async () => {
    const c = await connect(broker.url, opts({ protocolVersion, clientId: 'connect-' + protocolVersion }))
    assert.equal(c.connected, true)
    const closed = next(c, 'close')
    await c.end()
    await closed
    assert.equal(c.connected, false)
  })

  test(`v${protocolVersion}: publish and subscribe at QoS 0, 1 and 2`, T, async () => {
    const sub = await open({ protocolVersion })
    const pub = await open({ protocolVersion })
    const got = []
    sub.on('message', (topic, payload, packet) => got.push([topic, text(payload), packet.qos]))
    assert.deepEqual(await sub.subscribe(`qos/v${protocolVersion}/#`, { qos: 2 }), [2])
    const p0 = await pub.publish(`qos/v${protocolVersion}/0`, 'zero', { qos: 0 })
    const p1 = await pub.publish(`qos/v${protocolVersion}/1`, 'one', { qos: 1 })
    const p2 = await pub.publish(`qos/v${protocolVersion}/2`, new TextEncoder().encode('two'), { qos: 2 })
    assert.equal(p0, undefined)
    assert.equal(p1.type, 'puback')
    assert.equal(p2.type, 'pubcomp')
    await until(() => got.length >= 3, 5000, 'three messages')
    await sleep(200) // nothing more arrives
    got.sort((a, b) => a[2] - b[2])
    assert.deepEqual(got, [
      [`qos/v${protocolVersion}/0`, 'zero', 0],
      [`qos/v${protocolVersion}/1`, 'one', 1],
      [`qos/v${protocolVersion}/2`, 'two', 2],
    ])
    assert.deepEqual(await sub.unsubscribe(`qos/v${protocolVersion}/#`), protocolVersion == 5 ? [0] : [])
    await pub.publish(`qos/v${protocolVersion}/1`, 'after', { qos: 1 })
    await sleep(200)
    assert.equal(got.length, 3)
  })
}

test('a burst of 200 QoS 1 and 2 messages arrives complete, each once', T, async () => {
  const sub = await open()
  const pub = await open()
  const got = []
  sub.on('message', (t, payload) => got.push(json(payload).n))
  await sub.subscribe('burst/#', { qos: 2 })
  await Promise.all(Array.from({ length: 200 }, (_, n) => pub.publish('burst/x', { n }, { qos: 1 + (n % 2) })))
  await until(() => got.length >= 200, 10000, '200 messages')
  assert.deepEqual([...got].sort((a, b) => a - b), Array.from({ length: 200 }, (_, n) => n))
})

test('retained messages, with MQTT 5 properties and the JSON helper', T, async () => {
  const pub = await open()
  await pub.publish('tennis/m1/score', { players: ['A', 'B'], status: 'live' }, {
    qos: 1,
    retain: true,
    properties: { contentType: 'application/json', userProperties: { source: 'test' } },
  })
  const sub = await open()
  const message = next(sub, 'message')
  await sub.subscribe('tennis/+/score', { qos: 1 })
  const [topic, payload, packet] = await message
  assert.equal(topic, 'tennis/m1/score')
  assert.deepEqual(json(payload), { players: ['A', 'B'], status: 'live' })
  assert.equal(packet.retain, true)
  assert.equal(packet.properties.contentType, 'application/json')
  assert.deepEqual(packet.properties.userProperties, [['source', 'test']])
  await pub.publish('tennis/m1/score', '', { qos: 1, retain: true }) // clear it
})

test('an invalid filter or topic is refused before sending', T, async () => {
  const c = await open()
  await assert.rejects(c.subscribe('a/#/b'), /invalid topic filter/)
  await assert.rejects(c.publish('a/+', 'x'), /invalid topic/)
})

test('connect() rejects when the broker is unreachable', T, async () => {
  const errors = []
  await assert.rejects(
    connect('ws://127.0.0.1:9/mqtt', { WebSocket, reconnect: { min: 10 } }).catch(e => (errors.push(e), Promise.reject(e))),
  )
  assert.equal(errors.length, 1)
})

for (const protocolVersion of [4, 5]) {
  test(`v${protocolVersion}: reconnects after a broker restart, resubscribes, gets the next message`, T, async () => {
    const port = broker.port
    const c = await open({ protocolVersion, clientId: 'restart-' + protocolVersion })
    await c.subscribe('restart/+', { qos: 1 })
    const events = []
    for (const e of ['offline', 'close', 'reconnect', 'connect']) c.on(e, () => events.push(e))
    const offline = next(c, 'offline')
    await broker.stop()
    await offline
    assert.equal(c.connected, false)
    await sleep(300) // a few failed attempts while down
    broker = await startBroker(port)
    await next(c, 'connect', 10000)
    assert.ok(events.includes('reconnect'))
    const message = next(c, 'message')
    const pub = await open()
    // The resubscription may still be in flight: publish until it lands.
    const deadline = Date.now() + 5000
    let got
    message.then(m => (got = m))
    while (!got && Date.now() < deadline) {
      await pub.publish('restart/x', 'after restart', { qos: 1 })
      await sleep(100)
    }
    const [topic, payload] = await message
    assert.equal(topic, 'restart/x')
    assert.equal(text(payload), 'after restart')
  })
}

test('a QoS 1 message published while the broker is down survives a reload and is delivered once', T, async () => {
  const port = broker.port
  await broker.stop()
  const storage = new FakeStorage()
  const page = { WebSocket, clientId: 'kiosk', persistence: storage, reconnect: { min: 50, max: 200 } }
  const url = `ws://127.0.0.1:${port}/mqtt`

  const first = createClient(url, page)
  const publishing = first.publish('orders/new', { id: 42 }, { qos: 1 })
  const q0 = first.publish('orders/noise', 'qos 0 is never stored', { qos: 0 })
  const key = `rallymq:${url}:kiosk`
  const stored = storage.getItem(key)
  assert.ok(stored, 'stored before publish() returns')
  assert.match(stored, /orders\/new/)
  assert.doesNotMatch(stored, /orders\/noise/)
  // The page goes away before the broker comes back.
  await first.end()
  await assert.rejects(publishing, /ended/)
  await assert.rejects(q0, /ended/)
  assert.ok(storage.getItem(key), 'still stored after the page is gone')

  broker = await startBroker(port)
  const sub = await open({ protocolVersion: 4 })
  const got = []
  sub.on('message', (topic, payload) => got.push(json(payload)))
  await sub.subscribe('orders/#', { qos: 1 })

  // The reloaded page: same URL, client id and storage.
  const second = createClient(url, page)
  clients.push(second)
  await until(() => got.length, 10000, 'delivery')
  await until(() => storage.getItem(key) == null, 5000, 'storage cleared after PUBACK')
  await sleep(300)
  assert.deepEqual(got, [{ id: 42 }])
})

test('persistence past its bound reports a QuotaExceededError and rejects the publish', T, async () => {
  const storage = new FakeStorage()
  const c = await open({ clientId: 'bounded', persistence: storage, storeLimit: 2000 })
  const errors = []
  c.on('error', e => errors.push(e))
  await c.publish('big', 'x'.repeat(100), { qos: 1 })
  await assert.rejects(c.publish('big', 'x'.repeat(5000), { qos: 1 }), { name: 'QuotaExceededError' })
  assert.equal(errors.length, 1)
  assert.equal(errors[0].name, 'QuotaExceededError')
  // a storage that throws (the browser's quota) is reported the same way
  const full = new FakeStorage()
  full.setItem = () => {
    throw Object.assign(new Error('quota'), { name: 'QuotaExceededError' })
  }
  const d = await open({ clientId: 'full', persistence: full })
  const derr = []
  d.on('error', e => derr.push(e))
  await assert.rejects(d.publish('x', 'y', { qos: 1 }), /quota/)
  assert.equal(derr.length, 1)
  // QoS 0 never touches storage
  const writes = storage.writes
  await c.publish('q0', 'zero', { qos: 0 })
  assert.equal(storage.writes, writes)
})

test('the offline queue is bounded', T, async () => {
  const c = createClient('ws://127.0.0.1:9/mqtt', { WebSocket, queueLimit: 2, reconnect: { min: 1000 } })
  c.on('error', () => {})
  const a = c.publish('a', '1')
  const b = c.publish('a', '2', { qos: 1 })
  await assert.rejects(c.publish('a', '3'), /queue full/)
  await c.end()
  await assert.rejects(a, /ended/)
  await assert.rejects(b, /ended/)
})

test("the broker's topic aliases: a default MQTT 5 client gets them and every message with its topic; with 0, none", T, async () => {
  // A WebSocket that also decodes what arrives: the PUBLISHes as they were on the wire.
  const tapped = wire =>
    class extends WebSocket {
      constructor(...a) {
        super(...a)
        let buf = new Uint8Array(0)
        this.on('message', data => {
          buf = Buffer.concat([buf, new Uint8Array(data)])
          for (let r; (r = decode(buf, 5)); ) {
            buf = buf.subarray(r[1])
            if (r[0].type == 'publish') wire.push([r[0].topic, r[0].properties.topicAlias])
          }
        })
      }
    }
  const topics = [1, 2, 1, 3, 2, 1, 3].map(n => `alias/court/${n}/score`)
  const run = async (extra, wire) => {
    const sub = await open({ ...extra, WebSocket: tapped(wire) })
    const pub = await open()
    const got = []
    sub.on('message', (topic, payload) => got.push([topic, text(payload)]))
    await sub.subscribe('alias/#', { qos: 1 })
    for (const [i, topic] of topics.entries()) await pub.publish(topic, String(i), { qos: 1 })
    await until(() => got.length >= topics.length, 5000, 'every message')
    assert.deepEqual(got, topics.map((t, i) => [t, String(i)]))
    await sub.end()
  }
  const aliased = []
  await run({}, aliased)
  assert.deepEqual(aliased, [
    [topics[0], 1], [topics[1], 2], ['', 1], [topics[3], 3], ['', 2], ['', 1], ['', 3],
  ])
  const plain = []
  await run({ topicAliasMaximum: 0 }, plain)
  assert.deepEqual(plain, topics.map(t => [t, undefined]))
})
