/**
 * rallymq.js — a dependency-free MQTT 3.1.1 / 5.0 client over WebSockets, one ES module.
 * Runs in browsers (globalThis.WebSocket) and in Node (pass `WebSocket` from the `ws` package).
 *
 *   import { connect, createClient, text, json } from './rallymq.js'
 *
 *   const client = await connect('ws://host:8080/mqtt', {
 *     clientId,            // default: random 'rallymq-…' (give one to use persistence)
 *     username, password,  // password: string, Uint8Array, or a function returning one (or a
 *                          // promise of one), called before each (re)connect: a fresh token
 *     protocolVersion: 5,  // 5 (default) or 4 (MQTT 3.1.1)
 *     keepalive: 60,       // seconds; 0 disables PINGREQ
 *     clean: true,         // clean start on the first connection
 *     sessionExpiry,       // MQTT 5 Session Expiry Interval, seconds
 *     will,                // { topic, payload, qos, retain, properties }
 *     reconnect: true,     // false, true or { min: 1000, max: 30000 } ms (exponential, jittered)
 *     persistence: false,  // true (localStorage) or a Storage-like { getItem, setItem, removeItem }
 *     queueLimit: 1000,    // bounded offline queue (messages); past it publish() rejects
 *     storeLimit: 262144,  // bytes of persisted state; past it a QuotaExceededError is reported
 *     connectTimeout: 30000,
 *     topicAliasMaximum: 64, // MQTT 5: aliases the broker may use for topics it sends; 0: none
 *     properties,          // extra MQTT 5 CONNECT properties, e.g. { receiveMaximum: 100 }
 *     WebSocket,           // a WebSocket constructor (Node); default globalThis.WebSocket
 *   })
 *   // connect() resolves on the first successful CONNACK and rejects if that first attempt
 *   // fails. createClient(url, options) returns the client at once and keeps (re)connecting
 *   // in the background: use it to publish while the broker is unreachable.
 *
 *   await client.subscribe('tennis/+/score', { qos: 1 })      // or ['a/#', 'b'] or
 *                                                           // [{ filter, qos, nl, rap, rh }]
 *   // resolves with the granted QoS / reason codes; rejects if any is a failure (>= 0x80)
 *   client.on('message', (topic, payload, packet) => json(payload)) // payload: Uint8Array
 *   await client.publish('a/b', 'text' | Uint8Array | ArrayBuffer | object-as-JSON,
 *                        { qos: 0 | 1 | 2, retain: false, properties: { contentType: 'x' } })
 *   // resolves when the QoS flow completes (QoS 0: written; 1: PUBACK; 2: PUBCOMP)
 *   await client.unsubscribe('a/#')                          // or an array
 *   await client.end()                                       // DISCONNECT, no reconnect
 *   client.on(event, fn) / client.off(event, fn) / client.once(event, fn)
 *   // events: 'connect' (connack), 'reconnect', 'offline', 'close', 'error' (Error),
 *   //         'message' (topic, payload, packet), 'disconnect' (server DISCONNECT packet)
 *   client.connected                                         // boolean
 *
 *   text(payload) -> string (UTF-8);  json(payload) -> parsed JSON
 *   encode(packet, version) -> Uint8Array;  decode(bytes, version) -> [packet, length] | null
 *   (packet objects: see web/rallymq.d.ts)
 */

const TE = new TextEncoder()
const TD = new TextDecoder('utf-8', { fatal: true })
const TYPES = ',connect,connack,publish,puback,pubrec,pubrel,pubcomp,subscribe,suback,unsubscribe,unsuback,pingreq,pingresp,disconnect,auth'.split(',')

// MQTT 5 properties: id -> [name, kind, mask of packet types allowed (bit 0: will properties)]
// kinds: 1 byte (0 or 1), 2 u16, 4 u32, 3 variable byte integer, 5 string, 6 binary, 7 pair
const PROPS = {
  1: ['payloadFormatIndicator', 1, 9],
  2: ['messageExpiryInterval', 4, 9],
  3: ['contentType', 5, 9],
  8: ['responseTopic', 5, 9],
  9: ['correlationData', 6, 9],
  11: ['subscriptionIdentifier', 3, 264],
  17: ['sessionExpiryInterval', 4, 16390],
  18: ['assignedClientIdentifier', 5, 4],
  19: ['serverKeepAlive', 2, 4],
  21: ['authenticationMethod', 5, 32774],
  22: ['authenticationData', 6, 32774],
  23: ['requestProblemInformation', 1, 2],
  24: ['willDelayInterval', 4, 1],
  25: ['requestResponseInformation', 1, 2],
  26: ['responseInformation', 5, 4],
  28: ['serverReference', 5, 16388],
  31: ['reasonString', 5, 51956],
  33: ['receiveMaximum', 2, 6],
  34: ['topicAliasMaximum', 2, 6],
  35: ['topicAlias', 2, 8],
  36: ['maximumQoS', 1, 4],
  37: ['retainAvailable', 1, 4],
  38: ['userProperties', 7, 65535],
  39: ['maximumPacketSize', 4, 6],
  40: ['wildcardSubscriptionAvailable', 1, 4],
  41: ['subscriptionIdentifiersAvailable', 1, 4],
  42: ['sharedSubscriptionAvailable', 1, 4],
}
const IDS = {}
for (const id in PROPS) IDS[PROPS[id][0]] = +id
const NONZERO = [11, 33, 35, 39]
// MQTT 5 reason codes each packet type may carry
const CODES = {
  2: '00808182838485868788898a8c909597999a9b9c9d9f',
  4: '001080838790919799',
  6: '0092',
  9: '0001028083878f91979ea1a2',
  11: '00118083878f91',
  14: '00048081828387898b8d8e8f90939495969798999a9b9c9d9e9fa0a1a2',
  15: '001819',
}
for (const t in CODES) CODES[t] = CODES[t].match(/../g).map(h => parseInt(h, 16))
CODES[5] = CODES[4]
CODES[7] = CODES[6]

const fail = (message, code = 0x81) => Object.assign(new Error(message), { code })

/** UTF-8 text of a payload. */
export const text = payload => new TextDecoder().decode(payload)
/** A payload parsed as JSON. */
export const json = payload => JSON.parse(text(payload))

const bytes = x =>
  x == null ? new Uint8Array(0)
  : typeof x == 'string' ? TE.encode(x)
  : x instanceof Uint8Array ? x
  : x instanceof ArrayBuffer ? new Uint8Array(x)
  : ArrayBuffer.isView(x) ? new Uint8Array(x.buffer, x.byteOffset, x.byteLength)
  : TE.encode(JSON.stringify(x))

const checkTopic = (topic, filter) => {
  const levels = topic.split('/')
  levels.forEach((level, i) => {
    if (/[+#]/.test(level) && !(filter && (level == '+' || (level == '#' && i == levels.length - 1))))
      throw fail('invalid topic ' + (filter ? 'filter ' : '') + JSON.stringify(topic), filter ? 0x8f : 0x90)
  })
  if (!topic || (filter && /^\$share\/([^/]*)(\/|$)/.test(topic) && !/^\$share\/[^/+#]+\/./.test(topic)))
    throw fail('empty topic', 0x90)
  return topic
}

// ---- decoding ----------------------------------------------------------------------------

class Reader {
  constructor(b, v) {
    this.b = b
    this.i = 0
    this.v = v
  }
  take(n) {
    const i = this.i
    if ((this.i += n) > this.b.length) throw fail('malformed packet: truncated')
    return i
  }
  u8() {
    return this.b[this.take(1)]
  }
  u16() {
    const i = this.take(2)
    return (this.b[i] << 8) | this.b[i + 1]
  }
  u32() {
    return this.u16() * 65536 + this.u16()
  }
  id() {
    const id = this.u16()
    if (!id) throw fail('packet identifier 0')
    return id
  }
  vbi() {
    let n = 0, m = 1, c
    do {
      if (m > 2097152) throw fail('malformed variable byte integer')
      c = this.u8()
      n += (c & 127) * m
      m *= 128
    } while (c & 128)
    return n
  }
  bin() {
    const n = this.u16(), i = this.take(n)
    return this.b.slice(i, i + n)
  }
  str() {
    let s
    try {
      s = TD.decode(this.bin())
    } catch {
      throw fail('invalid UTF-8')
    }
    if (s.includes('\0')) throw fail('U+0000 in a string')
    return s
  }
  more() {
    return this.i < this.b.length
  }
  end() {
    if (this.more()) throw fail('malformed packet: trailing bytes')
  }
  code(t) {
    const c = this.u8()
    if (!CODES[t].includes(c)) throw fail('invalid reason code ' + c + ' in ' + TYPES[t])
    return c
  }
  props(t) {
    const o = {}
    if (this.v < 5) return o
    const stop = this.vbi() + this.i
    if (stop > this.b.length) throw fail('malformed properties')
    while (this.i < stop) {
      const id = this.vbi(), def = PROPS[id]
      if (!def || !((def[2] >> t) & 1)) throw fail('property ' + id + ' not allowed in ' + (TYPES[t] || 'will'), 0x82)
      const [name, kind] = def
      let x =
        kind == 1 ? this.u8()
        : kind == 2 ? this.u16()
        : kind == 4 ? this.u32()
        : kind == 3 ? this.vbi()
        : kind == 5 ? this.str()
        : kind == 6 ? this.bin()
        : [this.str(), this.str()]
      if ((kind == 1 && x > 1) || (!x && NONZERO.includes(id))) throw fail('invalid value of property ' + name, 0x82)
      if (id == 8) checkTopic(x)
      if (id == 38 || (id == 11 && t == 3)) (o[name] ||= []).push(x)
      else if (name in o) throw fail('duplicate property ' + name, 0x82)
      else o[name] = x
    }
    if (this.i != stop) throw fail('malformed properties')
    return o
  }
  subopts() {
    const o = this.u8(), rh = (o >> 4) & 3
    if (o & (this.v < 5 ? 252 : 192) || rh > 2 || (o & 3) > 2) throw fail('invalid subscription options')
    return { qos: o & 3, nl: !!(o & 4), rap: !!(o & 8), rh }
  }
}

function parse(h, b, v) {
  const t = h >> 4, f = h & 15, r = new Reader(b, v), p = { type: TYPES[t] }
  if (!t || (t == 15 && v < 5)) throw fail('invalid packet type ' + t)
  if (t != 3 && f != (t == 6 || t == 8 || t == 10 ? 2 : 0)) throw fail('invalid fixed header flags')
  if (t == 1) {
    const name = r.str(), level = r.u8()
    if (name != 'MQTT' || (level != 4 && level != 5)) throw fail('unsupported protocol ' + name + ' ' + level, 0x84)
    const fl = r.u8(), wq = (fl >> 3) & 3
    if (fl & 1 || wq > 2 || (!(fl & 4) && fl & 56) || (level < 5 && fl & 64 && !(fl & 128)))
      throw fail('invalid connect flags')
    r.v = p.version = level
    p.clean = !!(fl & 2)
    p.keepalive = r.u16()
    p.properties = r.props(1)
    p.clientId = r.str()
    if (fl & 4) {
      const properties = r.props(0)
      p.will = { topic: checkTopic(r.str()), payload: r.bin(), qos: wq, retain: !!(fl & 32), properties }
    }
    if (fl & 128) p.username = r.str()
    if (fl & 64) p.password = r.bin()
  } else if (t == 2) {
    const fl = r.u8(), c = r.u8()
    if (fl & 254 || (v < 5 ? c > 5 : !CODES[2].includes(c)) || (fl && c)) throw fail('invalid connack')
    p.sessionPresent = !!fl
    p.code = c
    p.properties = r.props(2)
  } else if (t == 3) {
    const qos = (f >> 1) & 3
    if (qos > 2 || (f & 8 && !qos)) throw fail('invalid publish flags')
    p.topic = r.str()
    if (qos) p.id = r.id()
    p.properties = r.props(3)
    if (p.topic || !p.properties.topicAlias) checkTopic(p.topic)
    Object.assign(p, { qos, retain: !!(f & 1), dup: !!(f & 8), payload: b.slice(r.i) })
    return p
  } else if (t < 8) {
    p.id = r.id()
    p.code = v > 4 && r.more() ? r.code(t) : 0
    p.properties = r.more() ? r.props(t) : {}
  } else if (t == 8 || t == 10) {
    p.id = r.id()
    p.properties = r.props(t)
    const list = []
    while (r.more()) {
      const filter = checkTopic(r.str(), 1), o = t == 8 && r.subopts()
      if (o.nl && filter.startsWith('$share/')) throw fail('no local on a shared subscription', 0x82)
      list.push(o ? { filter, ...o } : filter)
    }
    if (!list.length) throw fail('no topic filters', 0x82)
    p[t == 8 ? 'subscriptions' : 'filters'] = list
  } else if (t == 9 || t == 11) {
    p.id = r.id()
    p.properties = r.props(t)
    p.codes = []
    while (r.more() && (v > 4 || t == 9)) {
      const c = r.u8()
      if (!(v > 4 ? CODES[t] : [0, 1, 2, 128]).includes(c)) throw fail('invalid reason code ' + c)
      p.codes.push(c)
    }
  } else if (t > 13) {
    p.code = r.more() ? r.code(t) : 0
    p.properties = r.more() ? r.props(t) : {}
  }
  r.end()
  return p
}

/**
 * Decodes the packet at the start of `buf` for protocol `version` (4 or 5; a CONNECT carries
 * its own). Returns `[packet, bytesUsed]`, or `null` when more bytes are needed (nothing is
 * consumed then). Throws an Error (with an MQTT 5 reason `code`) on malformed input, and on a
 * packet larger than `max` bytes as soon as its fixed header says so.
 */
export function decode(buf, version = 5, max = 268435460) {
  let len = 0, m = 1, i = 1, c
  do {
    if (i > 4) throw fail('malformed remaining length')
    if (i >= buf.length) return null
    c = buf[i++]
    len += (c & 127) * m
    m *= 128
  } while (c & 128)
  if (i + len > max) throw fail('packet too large', 0x95)
  if (buf.length < i + len) return null
  return [parse(buf[0], buf.subarray(i, i + len), version), i + len]
}

// ---- encoding ----------------------------------------------------------------------------

const put = (w, b) => {
  for (const c of b) w.push(c)
}
const u16 = (w, n) => w.push((n >> 8) & 255, n & 255)
const vbi = (w, n) => {
  do w.push((n % 128) | (n > 127 ? 128 : 0))
  while ((n = Math.floor(n / 128)))
}
const field = (w, x) => {
  x = bytes(x)
  if (x.length > 65535) throw fail('field longer than 65535 bytes')
  u16(w, x.length)
  put(w, x)
}
const empty = o => !o || Object.values(o).every(x => x === undefined)

function props(w, o = {}, t) {
  const s = []
  for (const name in o) {
    const id = IDS[name], x = o[name]
    if (x === undefined) continue
    if (!id || !((PROPS[id][2] >> t) & 1)) throw fail('property ' + name + ' not allowed in ' + (TYPES[t] || 'will'))
    const kind = PROPS[id][1]
    for (const y of id == 38 ? (Array.isArray(x) ? x : Object.entries(x)) : id == 11 && Array.isArray(x) ? x : [x]) {
      s.push(id)
      if (kind == 7) field(s, y[0]), field(s, y[1])
      else if (kind > 4) field(s, y)
      else if (kind == 3) vbi(s, y)
      else if (kind == 4) u16(s, y / 65536), u16(s, y)
      else if (kind == 2) u16(s, y)
      else s.push(+y)
    }
  }
  vbi(w, s.length)
  put(w, s)
}

/** Encodes a packet object (see rallymq.d.ts) for protocol `version` (4 or 5). */
export function encode(p, version = 5) {
  const t = TYPES.indexOf(p.type), w = [], pr = p.properties, v = t == 1 ? p.version || version : version
  const five = v > 4
  let f = t == 6 || t == 8 || t == 10 ? 2 : 0, tail = []
  if (t < 1 || (t == 15 && !five)) throw fail('cannot encode ' + p.type)
  if (t == 1) {
    const will = p.will
    field(w, 'MQTT')
    w.push(v, (p.clean !== false && 2) | (will && 4 | ((will.qos || 0) << 3) | (will.retain && 32)) |
      (p.password != null && 64) | (p.username != null && 128))
    u16(w, p.keepalive ?? 60)
    five && props(w, pr, 1)
    field(w, p.clientId || '')
    if (will) {
      five && props(w, will.properties, 0)
      field(w, checkTopic(will.topic))
      field(w, will.payload)
    }
    p.username != null && field(w, p.username)
    p.password != null && field(w, p.password)
  } else if (t == 2) {
    w.push(p.sessionPresent ? 1 : 0, p.code || 0)
    five && props(w, pr, 2)
  } else if (t == 3) {
    const qos = p.qos || 0
    if (qos > 2 || (qos && !p.id)) throw fail('invalid publish')
    f = (p.dup && qos ? 8 : 0) | (qos << 1) | (p.retain ? 1 : 0)
    field(w, p.topic ? checkTopic(p.topic) : '')
    qos && u16(w, p.id)
    five && props(w, pr, 3)
    tail = bytes(p.payload)
  } else if (t < 8 || t > 13) {
    t < 8 && u16(w, p.id)
    if (five && (p.code || !empty(pr))) {
      w.push(p.code || 0)
      empty(pr) || props(w, pr, t)
    }
  } else if (t < 12) {
    u16(w, p.id)
    five && props(w, pr, t)
    if (t == 8)
      for (const s of p.subscriptions) {
        field(w, checkTopic(s.filter, 1))
        w.push(five ? (s.qos || 0) | (s.nl && 4) | (s.rap && 8) | ((s.rh || 0) << 4) : s.qos || 0)
      }
    if (t == 10) for (const s of p.filters) field(w, checkTopic(s, 1))
    if (t == 9 || (t == 11 && five)) for (const c of p.codes) w.push(five || c < 3 ? c : 128)
  }
  const head = [(t << 4) | f]
  vbi(head, w.length + tail.length)
  if (w.length + tail.length > 268435455) throw fail('packet too large', 0x95)
  const out = new Uint8Array(head.length + w.length + tail.length)
  out.set(head)
  out.set(w, head.length)
  out.set(tail, head.length + w.length)
  return out
}

// ---- the client --------------------------------------------------------------------------

const b64 = u => {
  let s = ''
  for (const c of u) s += String.fromCharCode(c)
  return btoa(s)
}
const noop = () => {}

export class Client {
  constructor(url, options = {}) {
    const o = (this.o = { keepalive: 60, protocolVersion: 5, clean: true, queueLimit: 1000, storeLimit: 262144, connectTimeout: 30000, topicAliasMaximum: 64, ...options })
    this.url = url
    this.v = o.protocolVersion
    this.clientId = o.clientId ?? 'rallymq-' + Math.random().toString(36).slice(2, 12)
    this.h = {}
    this.out = new Map() // packet id -> { p: publish or pubrel, ok, no }: outgoing QoS 1/2 in flight
    this.acks = new Map() // packet id -> { p: subscribe or unsubscribe, ok, no }
    this.q = [] // offline queue: { p, ok, no } not sent yet
    this.inq = new Set() // inbound QoS 2 ids between PUBREC and PUBREL
    this.subs = new Map() // filter -> subscription, to restore when the broker has no session
    this.n = 0
    this.tries = 0
    this.connected = false
    this.store = o.persistence === true ? globalThis.localStorage : o.persistence || null
    this.key = 'rallymq:' + url + ':' + this.clientId
    this.ready = new Promise((ok, no) => ((this.ok = ok), (this.no = no)))
    this.ready.catch(noop)
    if (this.store) {
      try {
        const s = JSON.parse(this.store.getItem(this.key) || '{}', (k, x) =>
          x && x.$b != null ? Uint8Array.from(atob(x.$b), c => c.charCodeAt(0)) : x)
        for (const p of s.o || []) (p.id ? this.out.set(p.id, { p, ok: noop, no: noop }) : this.q.push({ p, ok: noop, no: noop }))
        for (const id of s.i || []) this.inq.add(id)
      } catch (e) {
        setTimeout(() => this.emit('error', e))
      }
    }
    this.open()
  }

  on(event, fn) {
    ;(this.h[event] ||= []).push(fn)
    return this
  }
  off(event, fn) {
    this.h[event] = (this.h[event] || []).filter(g => g !== fn && g.fn !== fn)
    return this
  }
  once(event, fn) {
    const g = (...a) => (this.off(event, g), fn(...a))
    g.fn = fn
    return this.on(event, g)
  }
  emit(event, ...a) {
    for (const fn of this.h[event] || [])
      try {
        fn(...a)
      } catch (e) {
        event != 'error' && this.emit('error', e)
      }
  }

  /** Persists outgoing QoS 1/2 and inbound QoS 2 ids; false (and an 'error' event) on failure. */
  save() {
    const st = this.store
    if (!st) return true
    try {
      const o = [...this.out.values(), ...this.q].map(e => e.p).filter(p => p.qos || p.type == 'pubrel')
      if (!o.length && !this.inq.size) return st.removeItem(this.key), true
      const s = JSON.stringify({ o, i: [...this.inq] }, (k, x) => (x instanceof Uint8Array ? { $b: b64(x) } : x))
      if (s.length > this.o.storeLimit)
        throw Object.assign(new Error('rallymq: persisted state over storeLimit (' + s.length + ' bytes)'), { name: 'QuotaExceededError' })
      st.setItem(this.key, s)
      return true
    } catch (e) {
      this.emit('error', e)
      this.err = e
    }
  }

  open() {
    const pw = this.o.password
    if (typeof pw != 'function') return this.dial(pw)
    // a fresh password (a token) for each attempt; a rejection fails the attempt
    new Promise(r => r(pw())).then(
      v => this.ended || this.dial(v),
      e => this.ended || (this.no(e), this.emit('error', e), this.retry())
    )
  }

  dial(password) {
    const WS = this.o.WebSocket || globalThis.WebSocket
    let ws
    try {
      ws = this.ws = new WS(this.url, 'mqtt')
    } catch (e) {
      this.no(e)
      this.emit('error', e)
      return this.retry()
    }
    ws.binaryType = 'arraybuffer'
    this.buf = new Uint8Array(0)
    ws.onopen = () => {
      const o = this.o, five = this.v > 4
      const properties = five ? { sessionExpiryInterval: o.sessionExpiry, topicAliasMaximum: o.topicAliasMaximum || undefined, ...o.properties } : {}
      // the broker's aliases may go up to what we announce; they last one connection
      this.tam = properties.topicAliasMaximum || 0
      this.write({
        type: 'connect',
        version: this.v,
        clean: this.was ? o.clean && !five : o.clean,
        keepalive: o.keepalive,
        clientId: this.clientId,
        username: o.username,
        password,
        will: o.will && { ...o.will, payload: bytes(o.will.payload) },
        properties,
      })
    }
    ws.onmessage = ev => ws == this.ws && (typeof ev.data == 'string' ? this.kill(fail('rallymq: text frame')) : this.data(new Uint8Array(ev.data)))
    ws.onclose = () => this.closed(ws)
    ws.onerror = noop
    this.timer = setTimeout(() => this.kill(fail('rallymq: no CONNACK in time')), this.o.connectTimeout)
  }

  write(p) {
    this.ws.send(encode(p, this.v))
  }

  data(chunk) {
    const ws = this.ws
    let b = this.buf.length ? new Uint8Array(this.buf.length + chunk.length) : chunk
    if (b != chunk) b.set(this.buf), b.set(chunk, this.buf.length)
    try {
      // stop if a packet (DISCONNECT, an error) closed the connection
      for (let r; ws == this.ws && (r = decode(b, this.v)); ) {
        b = b.subarray(r[1])
        this.handle(r[0])
      }
      this.buf = b
    } catch (e) {
      if (this.connected && this.v > 4) this.write({ type: 'disconnect', code: e.code || 0x81 })
      this.kill(e)
    }
  }

  handle(p) {
    const t = p.type, id = p.id, e = this.out.get(id)
    if ((t == 'connack') == this.connected) throw fail('rallymq: unexpected ' + t, 0x82)
    if (t == 'connack') {
      clearTimeout(this.timer)
      if (p.code) throw fail('connection refused, reason code ' + p.code, p.code)
      this.connected = this.was = true
      this.tries = 0
      this.max = p.properties.receiveMaximum || 65535
      this.mps = p.properties.maximumPacketSize || 1 / 0
      this.mqos = p.properties.maximumQoS ?? 2
      this.alias = new Map()
      const ka = p.properties.serverKeepAlive ?? this.o.keepalive
      if (ka) {
        this.pong = true
        this.ping = setInterval(() => {
          if (!this.pong) return this.kill(fail('rallymq: no PINGRESP in time'))
          this.pong = false
          this.write({ type: 'pingreq' })
        }, ka * 1000)
      }
      if (!p.sessionPresent) {
        this.inq.clear()
        if (this.subs.size) this.send({ p: { type: 'subscribe', subscriptions: [...this.subs.values()], properties: {} }, ok: noop, no: e => this.emit('error', e) })
      }
      for (const e of this.out.values()) this.write(e.p.type == 'publish' ? { ...e.p, dup: true } : e.p)
      this.save()
      this.flush()
      this.emit('connect', p)
      this.ok(this)
    } else if (t == 'publish') {
      const a = p.properties.topicAlias
      if (a) {
        if (a > this.tam) throw fail('rallymq: topic alias ' + a + ' out of range', 0x94)
        p.topic ? this.alias.set(a, p.topic) : (p.topic = this.alias.get(a))
        if (!p.topic) throw fail('rallymq: unknown topic alias ' + a, 0x82)
      }
      const q2 = p.qos == 2
      if (!q2 || !this.inq.has(id)) {
        if (q2) {
          this.inq.add(id)
          this.save()
        }
        this.emit('message', p.topic, p.payload, p)
      }
      p.qos && this.write({ type: q2 ? 'pubrec' : 'puback', id })
    } else if (t == 'pubrel') {
      this.inq.delete(id) && this.save()
      this.write({ type: 'pubcomp', id })
    } else if (t == 'pubrec') {
      if (!e) return
      if (p.code > 127) return this.done(id, e, p)
      e.p = { type: 'pubrel', id }
      this.save()
      this.write(e.p)
    } else if (t == 'puback' || t == 'pubcomp') {
      if (e && (t == 'puback') == (e.p.qos == 1)) this.done(id, e, p)
    } else if (t == 'suback' || t == 'unsuback') {
      const a = this.acks.get(id)
      if (!a) return
      this.acks.delete(id)
      const bad = p.codes.some(c => c > 127)
      if (t == 'suback') a.p.subscriptions.forEach((s, i) => p.codes[i] < 128 && this.subs.set(s.filter, s))
      else a.p.filters.forEach(f => this.subs.delete(f))
      bad ? a.no(Object.assign(fail('rallymq: ' + t + ' with failure codes ' + p.codes, p.codes.find(c => c > 127)), { codes: p.codes })) : a.ok(p.codes)
    } else if (t == 'pingresp') this.pong = true
    else if (t == 'disconnect') {
      this.emit('disconnect', p)
      this.kill(p.code > 127 && fail('rallymq: disconnected by the broker, reason code ' + p.code, p.code))
    } else throw fail('unexpected ' + t, 0x82)
  }

  done(id, e, p) {
    this.out.delete(id)
    this.save()
    p.code > 127 ? e.no(fail('rallymq: publish refused, reason code ' + p.code, p.code)) : e.ok(p)
    this.flush()
  }

  send(e) {
    const p = e.p, map = p.type == 'publish' ? this.out : this.acks
    if (p.qos > this.mqos) {
      // above the broker's Maximum QoS (MQTT-3.2.2-11): refused here, never sent
      this.save()
      return e.no(fail('rallymq: QoS ' + p.qos + ' above the broker maximum', 0x9b))
    }
    if (p.type != 'publish' || p.qos) {
      do this.n = (this.n % 65535) + 1
      while (this.out.has(this.n) || this.acks.has(this.n))
      map.set((p.id = this.n), e)
    }
    const b = encode(p, this.v)
    if (b.length > this.mps) {
      // over the broker's Maximum Packet Size: it would close the connection
      map.delete(p.id)
      p.qos && this.save()
      return e.no(fail('rallymq: packet larger than the broker accepts', 0x95))
    }
    this.ws.send(b)
    p.type == 'publish' && (p.qos ? this.save() : e.ok())
  }

  flush() {
    while (this.connected && this.q.length && !(this.q[0].p.qos && this.out.size >= this.max)) this.send(this.q.shift())
  }

  enqueue(p) {
    return new Promise((ok, no) => {
      if (this.ended) throw fail('rallymq: client ended')
      if (this.q.length >= this.o.queueLimit) throw fail('rallymq: offline queue full', 0x97)
      encode({ ...p, id: 1 }, this.v) // throws on a packet MQTT cannot carry
      this.q.push({ p, ok, no })
      if (p.qos && !this.save()) {
        this.q.pop()
        throw this.err
      }
      this.flush()
    })
  }

  publish(topic, payload, { qos = 0, retain = false, properties = {} } = {}) {
    return this.enqueue({ type: 'publish', topic, payload: bytes(payload), qos, retain, dup: false, properties })
  }

  subscribe(filters, { qos = 0, nl = false, rap = false, rh = 0, properties = {} } = {}) {
    return this.enqueue({
      type: 'subscribe',
      subscriptions: [].concat(filters).map(f => (typeof f == 'string' ? { filter: f, qos, nl, rap, rh } : { qos, nl, rap, rh, ...f })),
      properties,
    })
  }

  unsubscribe(filters, { properties = {} } = {}) {
    return this.enqueue({ type: 'unsubscribe', filters: [].concat(filters), properties })
  }

  /** Closes the socket now (reporting `error` if given); reconnects unless ended. */
  kill(error) {
    error && this.emit('error', error)
    try {
      this.ws.close()
    } catch {}
    this.closed(this.ws, error)
  }

  closed(ws, error) {
    if (!ws || ws != this.ws) return
    this.ws = null
    clearTimeout(this.timer)
    clearInterval(this.ping)
    const was = this.connected
    this.connected = false
    this.q.unshift(...this.acks.values()) // subscribe and unsubscribe: sent again, with new ids
    this.acks.clear()
    this.no(error || fail('rallymq: connection failed'))
    was && this.emit('offline')
    this.emit('close')
    this.retry()
  }

  retry() {
    const r = this.o.reconnect
    if (this.ended || r === false || (this.single && !this.was)) return
    const { min = 1000, max = 30000 } = typeof r == 'object' ? r : {}
    this.timer = setTimeout(() => {
      this.emit('reconnect')
      this.open()
    }, Math.min(max, min * 2 ** this.tries++) * (0.5 + Math.random() / 2))
  }

  /** Sends DISCONNECT and closes; no reconnect. Pending operations reject (persisted ones stay stored). */
  end() {
    this.ended = true
    clearTimeout(this.timer)
    if (this.connected) this.write({ type: 'disconnect' })
    this.kill()
    const err = fail('rallymq: client ended')
    for (const e of [...this.q, ...this.out.values()]) e.no(err)
    this.q = []
    this.out.clear()
    return Promise.resolve()
  }
}

/** A client that connects (and reconnects) in the background; usable at once, even offline. */
export const createClient = (url, options) => new Client(url, options)

/** Resolves with the client on the first successful CONNACK; rejects if that first attempt fails. */
export async function connect(url, options) {
  const c = new Client(url, { ...options })
  c.single = 1
  try {
    return await c.ready
  } catch (e) {
    c.end()
    throw e
  }
}
