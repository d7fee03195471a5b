// The client's protocol behaviour against a scripted peer (a WebSocket server speaking MQTT
// through the same codec): resend with DUP, PUBREL after PUBREC, inbound QoS 2 once,
// resubscription, keep-alive, strict decoding, backoff, Receive Maximum, events.
import { test, afterEach } from 'node:test'
import assert from 'node:assert/strict'
import WebSocket from 'ws'
import { connect as connectClient, createClient as create, encode, text } from '../rallymq.js'
import { fakeBroker as fakeServer, next, until, FakeStorage } from './helpers.mjs'
const fakeBroker = (...a) => fakeServer(...a).then(s => (live.push(s), s))

const T = { timeout: 20000 }
// Whatever a test leaves open (after a failure too) is closed, so the file always ends.
const live = []
const connect = (...a) => connectClient(...a).then(c => (live.push(c), c))
const createClient = (...a) => (c => (live.push(c), c))(create(...a))
afterEach(async () => {
  for (const x of live.splice(0)) await (x.end ? x.end() : x.close())
})
const opts = extra => ({ WebSocket, reconnect: { min: 20, max: 100 }, ...extra })

async function session(extra = {}, version = 5, connack = {}) {
  const server = await fakeBroker(version)
  const connecting = connect(server.url, opts({ protocolVersion: version, ...extra }))
  const peer = await server.accept()
  const connectPacket = await peer.connack(false, connack)
  const client = await connecting
  return { server, peer, client, connectPacket }
}

test('CONNECT carries the options', T, async () => {
  const { server, client, connectPacket } = await session({
    clientId: 'opts',
    username: 'u',
    password: 'p',
    keepalive: 30,
    clean: false,
    sessionExpiry: 60,
    will: { topic: 'clients/opts', payload: 'gone', qos: 1, retain: true, properties: { willDelayInterval: 5 } },
    properties: { receiveMaximum: 10 },
  })
  assert.equal(connectPacket.version, 5)
  assert.equal(connectPacket.clientId, 'opts')
  assert.equal(connectPacket.username, 'u')
  assert.equal(text(connectPacket.password), 'p')
  assert.equal(connectPacket.keepalive, 30)
  assert.equal(connectPacket.clean, false)
  assert.deepEqual(connectPacket.properties, { sessionExpiryInterval: 60, topicAliasMaximum: 64, receiveMaximum: 10 })
  assert.equal(connectPacket.will.topic, 'clients/opts')
  assert.equal(text(connectPacket.will.payload), 'gone')
  assert.equal(connectPacket.will.qos, 1)
  assert.equal(connectPacket.will.retain, true)
  assert.deepEqual(connectPacket.will.properties, { willDelayInterval: 5 })
  await client.end()
  await server.close()
})

test('a password function gives each connection attempt a fresh password, sync or async', T, async () => {
  const server = await fakeBroker()
  let calls = 0
  const tokens = ['token-1', 'token-2', 'token-3']
  // A promise for the first attempts, a plain value for the third: both are accepted.
  const password = () => (calls++ < 2 ? new Promise(r => setTimeout(() => r(tokens[calls - 1]), 10)) : tokens[calls - 1])
  const connecting = connect(server.url, opts({ username: 'web', password }))
  let peer = await server.accept()
  assert.equal(text((await peer.connack()).password), 'token-1')
  const client = await connecting
  assert.equal(calls, 1)
  for (const expected of ['token-2', 'token-3']) {
    peer.drop()
    peer = await server.accept()
    assert.equal(text((await peer.connack()).password), expected)
    await next(client, 'connect')
  }
  assert.equal(calls, 3)
})

test('a password function that throws or rejects fails that attempt; the client tries again', T, async () => {
  const server = await fakeBroker()
  const refused = new Error('no token: signed out')
  await assert.rejects(connect(server.url, opts({ password: () => Promise.reject(refused) })), refused)
  await assert.rejects(connect(server.url, opts({ password: () => { throw refused } })), refused)
  await assert.rejects(server.accept(200), /no connection/)
  // In the background, a failed attempt is retried and calls the function again.
  let calls = 0
  const client = createClient(server.url, opts({ password: () => (++calls == 1 ? Promise.reject(refused) : 'fresh') }))
  const errors = []
  client.on('error', e => errors.push(e))
  const connected = next(client, 'connect')
  const peer = await server.accept()
  assert.equal(text((await peer.connack()).password), 'fresh')
  await connected
  assert.deepEqual(errors, [refused])
  assert.equal(calls, 2)
})

test('a refused CONNACK rejects connect() with its reason code, without retrying', T, async () => {
  const server = await fakeBroker()
  const connecting = connect(server.url, opts())
  const peer = await server.accept()
  await peer.expect('connect')
  peer.send({ type: 'connack', code: 0x86, properties: {} })
  await assert.rejects(connecting, { code: 0x86 })
  await assert.rejects(server.accept(300))
  await server.close()
})

test('in-flight QoS 1 is resent with DUP, QoS 2 after PUBREC resends PUBREL, on reconnect', T, async () => {
  const { server, peer, client } = await session({ clientId: 'dup' })
  const q1 = client.publish('a', 'one', { qos: 1 })
  const q2 = client.publish('b', 'two', { qos: 2 })
  const p1 = await peer.expect('publish')
  const p2 = await peer.expect('publish')
  assert.equal(p1.dup, false)
  peer.send({ type: 'pubrec', id: p2.id, code: 0, properties: {} })
  await peer.expect('pubrel')
  const events = []
  for (const e of ['offline', 'close', 'reconnect', 'connect']) client.on(e, () => events.push(e))
  peer.drop()
  const again = await server.accept()
  const reconnect = await again.connack(true)
  assert.equal(reconnect.clean, false, 'MQTT 5 reconnects resume the session')
  const resent = await again.expect('publish')
  assert.deepEqual({ ...resent, dup: true }, resent)
  assert.equal(resent.id, p1.id)
  assert.equal(text(resent.payload), 'one')
  const rel = await again.expect('pubrel')
  assert.equal(rel.id, p2.id)
  again.send({ type: 'puback', id: p1.id, code: 0, properties: {} })
  again.send({ type: 'pubcomp', id: p2.id, code: 0, properties: {} })
  assert.equal((await q1).type, 'puback')
  assert.equal((await q2).type, 'pubcomp')
  assert.deepEqual(events, ['offline', 'close', 'reconnect', 'connect'])
  await client.end()
  await server.close()
})

test('messages published while offline are sent after reconnecting, in order', T, async () => {
  const { server, peer, client } = await session()
  peer.drop()
  await next(client, 'offline')
  const sent = [client.publish('o', '1', { qos: 0 }), client.publish('o', '2', { qos: 1 }), client.publish('o', '3', { qos: 2 })]
  const again = await server.accept()
  await again.connack()
  const got = []
  for (let i = 0; i < 3; i++) got.push(await again.expect('publish'))
  assert.deepEqual(got.map(p => [text(p.payload), p.qos]), [['1', 0], ['2', 1], ['3', 2]])
  again.send({ type: 'puback', id: got[1].id, code: 0, properties: {} })
  again.send({ type: 'pubrec', id: got[2].id, code: 0, properties: {} })
  const rel = await again.expect('pubrel')
  again.send({ type: 'pubcomp', id: rel.id, code: 0, properties: {} })
  await Promise.all(sent)
  await client.end()
  await server.close()
})

test('a failure reason code in PUBACK or PUBREC rejects the publish', T, async () => {
  const { server, peer, client } = await session()
  const a = client.publish('a', 'x', { qos: 1 })
  const b = client.publish('b', 'y', { qos: 2 })
  const pa = await peer.expect('publish')
  const pb = await peer.expect('publish')
  peer.send({ type: 'puback', id: pa.id, code: 0x87, properties: { reasonString: 'no' } })
  peer.send({ type: 'pubrec', id: pb.id, code: 0x97, properties: {} })
  await assert.rejects(a, { code: 0x87 })
  await assert.rejects(b, { code: 0x97 })
  // 0x10 (no matching subscribers) is a success
  const c = client.publish('c', 'z', { qos: 1 })
  const pc = await peer.expect('publish')
  peer.send({ type: 'puback', id: pc.id, code: 0x10, properties: {} })
  assert.equal((await c).code, 0x10)
  await client.end()
  await server.close()
})

test('an inbound QoS 2 message is delivered exactly once, even when redelivered', T, async () => {
  const { server, peer, client } = await session()
  const got = []
  client.on('message', (topic, payload) => got.push(text(payload)))
  const publish = { type: 'publish', topic: 'q2', id: 9, qos: 2, retain: false, dup: false, payload: 'once', properties: {} }
  peer.send(publish)
  assert.equal((await peer.expect('pubrec')).id, 9)
  peer.send({ ...publish, dup: true })
  assert.equal((await peer.expect('pubrec')).id, 9)
  peer.send({ type: 'pubrel', id: 9, code: 0, properties: {} })
  assert.equal((await peer.expect('pubcomp')).id, 9)
  // after PUBREL the id is free: a new message with it is delivered
  peer.send({ ...publish, payload: 'twice' })
  await peer.expect('pubrec')
  assert.deepEqual(got, ['once', 'twice'])
  // QoS 1 is acknowledged
  peer.send({ ...publish, qos: 1, id: 10, payload: 'q1' })
  assert.equal((await peer.expect('puback')).id, 10)
  assert.deepEqual(got, ['once', 'twice', 'q1'])
  await client.end()
  await server.close()
})

test('inbound QoS 2 ids survive a reload with persistence', T, async () => {
  const storage = new FakeStorage()
  const { server, peer, client } = await session({ clientId: 'in2', persistence: storage })
  const got = []
  client.on('message', (t, payload) => got.push(text(payload)))
  const publish = { type: 'publish', topic: 'q2', id: 4, qos: 2, retain: false, dup: false, payload: 'x', properties: {} }
  peer.send(publish)
  await peer.expect('pubrec')
  await client.end()
  const second = createClient(server.url, opts({ clientId: 'in2', persistence: storage }))
  second.on('message', (t, payload) => got.push(text(payload)))
  const again = await server.accept()
  await again.connack(true)
  again.send({ ...publish, dup: true })
  await again.expect('pubrec')
  again.send({ type: 'pubrel', id: 4, code: 0, properties: {} })
  await again.expect('pubcomp')
  assert.deepEqual(got, ['x'])
  await until(() => storage.getItem(`rallymq:${server.url}:in2`) == null, 2000, 'storage cleared')
  await second.end()
  await server.close()
})

test('subscriptions are restored when the broker has no session, not when it has one', T, async () => {
  const { server, peer, client } = await session()
  const subscribing = client.subscribe(['a/+', { filter: 'b/#', qos: 2 }], { qos: 1 })
  const sub = await peer.expect('subscribe')
  assert.deepEqual(sub.subscriptions.map(s => [s.filter, s.qos]), [['a/+', 1], ['b/#', 2]])
  peer.send({ type: 'suback', id: sub.id, codes: [1, 2], properties: {} })
  assert.deepEqual(await subscribing, [1, 2])

  peer.drop()
  const second = await server.accept()
  await second.connack(true) // session present: nothing to restore
  const ping = client.publish('x', 'marker', { qos: 0 })
  assert.equal((await second.expect('publish')).topic, 'x')
  await ping

  second.drop()
  const third = await server.accept()
  await third.connack(false) // no session: subscribe again
  const restored = await third.expect('subscribe')
  assert.deepEqual(restored.subscriptions.map(s => [s.filter, s.qos]), [['a/+', 1], ['b/#', 2]])
  third.send({ type: 'suback', id: restored.id, codes: [1, 2], properties: {} })

  // an unsubscribed filter is not restored
  const unsubscribing = client.unsubscribe('a/+')
  const unsub = await third.expect('unsubscribe')
  third.send({ type: 'unsuback', id: unsub.id, codes: [0], properties: {} })
  await unsubscribing
  third.drop()
  const fourth = await server.accept()
  await fourth.connack(false)
  assert.deepEqual((await fourth.expect('subscribe')).subscriptions.map(s => s.filter), ['b/#'])
  await client.end()
  await server.close()
})

test('a SUBSCRIBE pending when the connection drops is sent again', T, async () => {
  const { server, peer, client } = await session()
  const subscribing = client.subscribe('p/#', { qos: 1 })
  await peer.expect('subscribe')
  peer.drop()
  const again = await server.accept()
  await again.connack(false)
  const sub = await again.expect('subscribe')
  again.send({ type: 'suback', id: sub.id, codes: [0x87], properties: {} })
  await assert.rejects(subscribing, e => e.codes[0] == 0x87)
  await client.end()
  await server.close()
})

test('keep-alive: PINGREQ, and the connection closes without PINGRESP', T, async () => {
  const { server, peer, client } = await session({ keepalive: 1 })
  const errors = []
  client.on('error', e => errors.push(e.message))
  assert.equal((await peer.next(2000)).type, 'pingreq')
  peer.send({ type: 'pingresp' })
  assert.equal((await peer.next(2000)).type, 'pingreq')
  // no answer this time
  await next(client, 'offline', 3000)
  assert.match(errors.join(), /PINGRESP/)
  const again = await server.accept()
  await again.connack()
  await client.end()
  await server.close()
})

test('Server Keep Alive from CONNACK wins', T, async () => {
  const { server, peer, client } = await session({ keepalive: 60 }, 5, { serverKeepAlive: 1 })
  assert.equal((await peer.next(2500)).type, 'pingreq')
  await client.end()
  await server.close()
})

for (const [what, bytes] of [
  ['a wildcard in a PUBLISH topic', Uint8Array.of(0x30, 0x03, 0x00, 0x01, 0x2b)],
  ['a reserved packet type', Uint8Array.of(0x00, 0x00)],
  ['a truncated body', Uint8Array.of(0x40, 0x01, 0x00)],
  ['a packet only servers receive', encode({ type: 'subscribe', id: 1, subscriptions: [{ filter: 'a', qos: 0 }] })],
]) {
  test(`strict decoding: ${what} is an error and closes the connection`, T, async () => {
    const { server, peer, client } = await session()
    const error = next(client, 'error')
    peer.send(bytes)
    const [e] = await error
    assert.ok(e instanceof Error)
    const disconnect = await peer.next(2000)
    assert.equal(disconnect.type, 'disconnect')
    assert.ok(disconnect.code >= 0x80)
    await peer.closed
    await server.accept() // and it reconnects
    await client.end()
    await server.close()
  })
}

test('packets split across WebSocket messages and several in one message', T, async () => {
  const { server, peer, client } = await session()
  const got = []
  client.on('message', (t, p) => got.push(text(p)))
  const bytes = [1, 2, 3].map(n => encode({ type: 'publish', topic: 't', qos: 0, payload: 'm' + n, properties: {} }))
  const all = new Uint8Array(bytes.reduce((n, b) => n + b.length, 0))
  bytes.reduce((at, b) => (all.set(b, at), at + b.length), 0)
  for (let i = 0; i < all.length; i += 3) peer.send(all.subarray(i, i + 3))
  peer.send(all)
  await until(() => got.length == 6, 3000, 'six messages')
  assert.deepEqual(got, ['m1', 'm2', 'm3', 'm1', 'm2', 'm3'])
  await client.end()
  await server.close()
})

test("the broker's Receive Maximum bounds QoS 1/2 in flight", T, async () => {
  const { server, peer, client } = await session({}, 5, { receiveMaximum: 2 })
  const sends = [1, 2, 3, 4].map(n => client.publish('r', String(n), { qos: 1 }))
  const a = await peer.expect('publish')
  const b = await peer.expect('publish')
  await assert.rejects(peer.next(200))
  peer.send({ type: 'puback', id: a.id, code: 0, properties: {} })
  const c = await peer.expect('publish')
  assert.equal(text(c.payload), '3')
  for (const p of [b, c]) peer.send({ type: 'puback', id: p.id, code: 0, properties: {} })
  const d = await peer.expect('publish')
  peer.send({ type: 'puback', id: d.id, code: 0, properties: {} })
  await Promise.all(sends)
  await client.end()
  await server.close()
})

test('MQTT 3.1.1 session: clean flag kept on reconnect, resubscribe when no session', T, async () => {
  const { server, peer, client, connectPacket } = await session({ clean: false, clientId: 'v4' }, 4)
  assert.equal(connectPacket.version, 4)
  assert.equal(connectPacket.clean, false)
  const s = client.subscribe('v4/#', { qos: 2 })
  const sub = await peer.expect('subscribe')
  peer.send({ type: 'suback', id: sub.id, codes: [2], properties: {} })
  await s
  peer.drop()
  const again = await server.accept()
  const reconnect = await again.connack(false)
  assert.equal(reconnect.clean, false)
  assert.equal((await again.expect('subscribe')).subscriptions[0].filter, 'v4/#')
  await client.end()
  await server.close()
})

test('reconnect backs off exponentially with jitter, up to the maximum', T, async () => {
  const server = await fakeBroker()
  const client = createClient(server.url, opts({ reconnect: { min: 100, max: 400 } }))
  client.on('error', () => {})
  const times = []
  for (let i = 0; i < 5; i++) {
    const peer = await server.accept(5000)
    times.push(Date.now())
    peer.drop() // before CONNACK: the attempt fails
  }
  const gaps = times.slice(1).map((t, i) => t - times[i])
  const bounds = [100, 200, 400, 400]
  gaps.forEach((gap, i) => {
    assert.ok(gap >= bounds[i] / 2 - 10, `gap ${i} ${gap} ms >= ${bounds[i] / 2}`)
    assert.ok(gap <= bounds[i] + 150, `gap ${i} ${gap} ms <= ${bounds[i]}`)
  })
  await client.end()
  await server.close()
})

test('no reconnect with reconnect: false; end() stops reconnecting', T, async () => {
  const { server, peer, client } = await session({ reconnect: false })
  const closed = next(client, 'close')
  peer.drop()
  await closed
  await assert.rejects(server.accept(300))
  const b = await session()
  b.peer.drop()
  await next(b.client, 'offline')
  await b.client.end()
  await assert.rejects(b.server.accept(300))
  await server.close()
  await b.server.close()
})

test('off() and once() remove listeners; a throwing listener becomes an error event', T, async () => {
  const { peer, server, client } = await session()
  let n = 0
  const count = () => n++
  client.on('message', count)
  client.once('message', count)
  const errors = []
  client.on('error', e => errors.push(e.message))
  client.on('message', () => {
    throw new Error('listener broke')
  })
  const pub = { type: 'publish', topic: 't', qos: 1, id: 1, payload: 'x', properties: {} }
  peer.send(pub)
  await peer.expect('puback')
  client.off('message', count)
  peer.send({ ...pub, id: 2 })
  await peer.expect('puback')
  assert.equal(n, 2)
  assert.deepEqual(errors, ['listener broke', 'listener broke'])
  await client.end()
  await server.close()
})

test('a server DISCONNECT is reported and the client reconnects', T, async () => {
  const { server, peer, client } = await session()
  const disconnect = next(client, 'disconnect')
  const error = next(client, 'error')
  peer.send({ type: 'disconnect', code: 0x8b, properties: { reasonString: 'shutting down' } })
  assert.equal((await disconnect)[0].code, 0x8b)
  assert.equal((await error)[0].code, 0x8b)
  await (await server.accept()).connack()
  await next(client, 'connect')
  await client.end()
  await server.close()
})

test('end() sends DISCONNECT', T, async () => {
  const { server, peer, client } = await session()
  await client.end()
  assert.equal((await peer.next()).type, 'disconnect')
  await peer.closed
  await assert.rejects(client.publish('a', 'b'), /ended/)
  await server.close()
})


test('connect() rejects on a URL the WebSocket refuses', T, async () => {
  await assert.rejects(connect('not a url', opts()), Error)
})

test("a message over the broker's Maximum Packet Size is refused, not sent", T, async () => {
  const storage = new FakeStorage()
  const { server, peer, client } = await session({ clientId: 'mps', persistence: storage }, 5, { maximumPacketSize: 100 })
  await assert.rejects(client.publish('big', 'x'.repeat(200), { qos: 1 }), { code: 0x95 })
  assert.equal(storage.getItem(`rallymq:${server.url}:mps`), null, 'not kept in storage')
  const ok = client.publish('small', 'y', { qos: 0 })
  assert.equal((await peer.expect('publish')).topic, 'small')
  await ok
  await client.end()
  await server.close()
})

test("a message above the broker's Maximum QoS is refused, not sent (MQTT-3.2.2-11)", T, async () => {
  const storage = new FakeStorage()
  const { server, peer, client } = await session({ clientId: 'mqos', persistence: storage }, 5, { maximumQoS: 1 })
  await assert.rejects(client.publish('q2', 'x', { qos: 2 }), { code: 0x9b })
  assert.equal(storage.getItem(`rallymq:${server.url}:mqos`), null, 'not kept in storage')
  const ok = client.publish('q1', 'y', { qos: 1 })
  const sent = await peer.expect('publish')
  assert.deepEqual([sent.topic, sent.qos], ['q1', 1])
  peer.send({ type: 'puback', id: sent.id, code: 0, properties: {} })
  await ok
  await client.end()
  await server.close()
})

test('inbound topic aliases up to the Topic Alias Maximum sent; one out of range is refused with 0x94', T, async () => {
  const { server, peer, client } = await session({ properties: { topicAliasMaximum: 2 } })
  const got = []
  client.on('message', (t, p) => got.push(t + '=' + text(p)))
  const publish = (topic, topicAlias, payload) => peer.send(encode({ type: 'publish', topic, qos: 0, payload, properties: { topicAlias } }, 5))
  publish('a/b', 1, '1')
  publish('', 1, '2')
  publish('c', 2, '3')
  publish('a/c', 1, '4') // a new topic for alias 1
  publish('', 1, '5')
  publish('', 2, '6')
  await until(() => got.length == 6)
  assert.deepEqual(got, ['a/b=1', 'a/b=2', 'c=3', 'a/c=4', 'a/c=5', 'c=6'])
  const error = next(client, 'error')
  publish('d', 3, '7')
  assert.equal((await error)[0].code, 0x94)
  assert.deepEqual([(await peer.next(2000)).type, got.length], ['disconnect', 6])
  // aliases last one connection: on the next one, alias 1 without a topic is unknown
  const again = await server.accept()
  await again.connack(false)
  const unknown = next(client, 'error')
  again.send(encode({ type: 'publish', topic: '', qos: 0, payload: 'x', properties: { topicAlias: 1 } }, 5))
  assert.equal((await unknown)[0].code, 0x82)
  assert.equal(got.length, 6)
  await client.end()
  await server.close()
})

test('CONNECT announces Topic Alias Maximum 64 by default; the option sets it, 0 announces none and refuses any alias with 0x94', T, async () => {
  const announced = async extra => {
    const { server, peer, client, connectPacket } = await session(extra, extra.protocolVersion)
    return { server, peer, client, tam: connectPacket.properties?.topicAliasMaximum }
  }
  for (const [extra, tam] of [[{}, 64], [{ topicAliasMaximum: 3 }, 3], [{ topicAliasMaximum: 0 }, undefined], [{ protocolVersion: 4 }, undefined]]) {
    const { server, client, tam: got } = await announced(extra)
    assert.equal(got, tam, JSON.stringify(extra))
    await client.end()
    await server.close()
  }
  for (const [topicAliasMaximum, alias] of [[3, 4], [0, 1]]) {
    const { server, peer, client } = await announced({ topicAliasMaximum })
    const got = []
    client.on('message', t => got.push(t))
    peer.send({ type: 'publish', topic: 'a/b', qos: 0, payload: 'x', properties: { topicAlias: topicAliasMaximum || undefined } })
    await until(() => got.length == 1)
    const error = next(client, 'error')
    peer.send({ type: 'publish', topic: 'a/c', qos: 0, payload: 'y', properties: { topicAlias: alias } })
    assert.equal((await error)[0].code, 0x94)
    const disconnect = await peer.next(2000)
    assert.deepEqual([disconnect.type, disconnect.code, got], ['disconnect', 0x94, ['a/b']])
    await client.end()
    await server.close()
  }
})

test('a packet before CONNACK, or a second CONNACK, is a protocol error', T, async () => {
  const server = await fakeBroker()
  const client = createClient(server.url, opts())
  const errors = []
  client.on('error', e => errors.push(e.message))
  const first = await server.accept()
  await first.expect('connect')
  first.send({ type: 'publish', topic: 'early', qos: 0, payload: 'x', properties: {} })
  await first.closed
  const second = await server.accept()
  await second.connack()
  await next(client, 'connect')
  second.send({ type: 'connack', code: 0, properties: {} })
  assert.equal((await second.next()).type, 'disconnect')
  await second.closed
  assert.deepEqual(errors, ['rallymq: unexpected publish', 'rallymq: unexpected connack'])
})

test('packets after a DISCONNECT in the same message are ignored; one close, one reconnect', T, async () => {
  const { server, peer, client } = await session()
  const events = []
  for (const e of ['close', 'offline', 'reconnect', 'message']) client.on(e, () => events.push(e))
  client.on('error', () => {})
  const disconnect = encode({ type: 'disconnect', code: 0x8b, properties: {} })
  const publish = encode({ type: 'publish', topic: 'late', qos: 1, id: 1, payload: 'x', properties: {} })
  const both = new Uint8Array(disconnect.length + publish.length)
  both.set(disconnect)
  both.set(publish, disconnect.length)
  peer.send(both)
  const again = await server.accept()
  await again.connack()
  await next(client, 'connect')
  await assert.rejects(server.accept(300), /no connection/)
  assert.deepEqual(events, ['offline', 'close', 'reconnect'])
})
