// Every packet of vectors.json (generated from rallymq-codec by crates/codec/tests/js_vectors.rs)
// decodes to the packet object and encodes back to the same bytes; every strict prefix is
// incomplete; damaged copies are refused.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { decode, encode } from '../rallymq.js'

const { vectors } = JSON.parse(readFileSync(new URL('./vectors.json', import.meta.url), 'utf8'), (key, value) =>
  value && typeof value == 'object' && !Array.isArray(value) && Object.keys(value).join() == 'hex'
    ? Uint8Array.from(Buffer.from(value.hex, 'hex'))
    : value,
)
const hex = bytes => Buffer.from(bytes).toString('hex')

test('the vector file covers every packet type in both versions', () => {
  for (const version of [4, 5]) {
    const types = new Set(vectors.filter(v => v.version == version).map(v => v.packet.type))
    const expected = 'connect connack publish puback pubrec pubrel pubcomp subscribe suback unsubscribe unsuback pingreq pingresp disconnect'.split(' ')
    if (version == 5) expected.push('auth')
    assert.deepEqual([...types].sort(), expected.sort())
  }
})

for (const { name, version, hex: wire, packet } of vectors) {
  test(`v${version} ${name}`, () => {
    const bytes = Uint8Array.from(Buffer.from(wire, 'hex'))
    const decoded = decode(bytes, version)
    assert.ok(decoded, 'complete')
    assert.equal(decoded[1], bytes.length, 'consumes the whole packet')
    assert.deepStrictEqual(decoded[0], packet)
    assert.equal(hex(encode(packet, version)), wire, 'encodes to the same bytes')
    for (let i = 0; i < bytes.length; i++) assert.equal(decode(bytes.subarray(0, i), version), null, `prefix of ${i} bytes`)
    // followed by another packet: only the first is consumed
    const two = new Uint8Array(bytes.length * 2)
    two.set(bytes)
    two.set(bytes, bytes.length)
    assert.equal(decode(two, version)[1], bytes.length)
  })
}

test('a packet over the size limit is refused from its fixed header', () => {
  assert.throws(() => decode(Uint8Array.of(0x30, 0xff, 0xff, 0x03), 5, 1000), /too large/)
})

const bad = {
  'reserved packet type 0': '0000',
  'AUTH in 3.1.1': ['f000', 4],
  'PUBREL without flag bit 1': '60020001',
  'PINGREQ with flags': 'c100',
  'PINGRESP with a body': 'd00100',
  'remaining length over four bytes': '30ffffffff01',
  'publish QoS 3': '3605000161000100',
  'publish DUP on QoS 0': '38040001616200',
  'publish packet id 0': '3205000161000000',
  'publish wildcard topic': '3004000161' + '2b',
  'publish empty topic without alias': '30030000' + '00',
  'publish invalid UTF-8 topic': '30040002c328',
  'publish U+0000 in topic': '300500026100' + '00',
  'publish truncated topic': '3003000561',
  'properties longer than the packet': '300400016105',
  'unknown property': '3006000161020500',
  'property not allowed in PUBLISH': '3009000161051100000000',
  'duplicate property': '30080001610401000100',
  'payload format indicator 2': '3006000161020102',
  'topic alias 0': '300700016103230000',
  'connack reserved flags': '20030200' + '00',
  'connack session present on failure': ['20020187', 4],
  'connack 3.1.1 return code 6': ['20020006', 4],
  'connack reason code not for CONNACK': '2003009200',
  'puback reason code not for puback': '4003000181',
  'puback trailing bytes (3.1.1)': ['4003000100', 4],
  'suback code 0x83 in 3.1.1': ['9003000183', 4],
  'subscribe without filters': '82020001',
  'subscribe reserved options': ['820600010001' + '61' + '04', 4],
  'subscribe retain handling 3': '8207000100000161' + '30',
  'subscribe bad wildcard': '82080001000002612b' + '00',
  'unsubscribe without filters': 'a203000100',
  'disconnect unknown code': 'e00101',
  'connect protocol MQIsdp': '100e00064d51497364700302003c0000',
  'connect reserved flag': '100c00044d5154540401003c0000',
}

for (const [what, spec] of Object.entries(bad)) {
  const [wire, version] = Array.isArray(spec) ? spec : [spec, 5]
  test(`refuses: ${what}`, () => {
    assert.throws(() => decode(Uint8Array.from(Buffer.from(wire, 'hex')), version), Error)
  })
}
