// Mutated and random input: the decoder returns a packet, asks for more bytes, or throws its own
// Error (with a reason code), never anything else; whatever it accepts re-encodes and decodes
// to the same packet. Seeded, so a failure repeats.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { decode, encode } from '../rallymq.js'

const { vectors } = JSON.parse(readFileSync(new URL('./vectors.json', import.meta.url), 'utf8'))

let seed = 0x2545f491
const rand = n => {
  seed ^= seed << 13
  seed ^= seed >>> 17
  seed ^= seed << 5
  return (seed >>> 0) % n
}

function check(bytes, version) {
  let r
  try {
    r = decode(bytes, version)
  } catch (e) {
    assert.ok(typeof e.code == 'number' && e.code >= 0x80, `not a decoder error: ${e.stack}`)
    return
  }
  if (!r) return
  const [packet] = r
  const again = decode(encode(packet, packet.type == 'connect' ? packet.version : version), version)
  assert.deepStrictEqual(again[0], packet)
}

test('mutated vectors', () => {
  for (let round = 0; round < 40; round++)
    for (const { hex, version } of vectors) {
      const bytes = Uint8Array.from(Buffer.from(hex, 'hex'))
      const edits = 1 + rand(3)
      for (let i = 0; i < edits; i++) {
        const at = rand(bytes.length)
        const kind = rand(3)
        if (kind == 0) bytes[at] = rand(256)
        else if (kind == 1) bytes[at] ^= 1 << rand(8)
        else bytes[at] = [0, 0xff, 0x7f, 0x80][rand(4)]
      }
      check(bytes, version)
    }
})

test('random bytes', () => {
  for (let i = 0; i < 20000; i++) {
    const bytes = Uint8Array.from({ length: rand(40) }, () => rand(256))
    if (bytes.length > 1) bytes[1] = Math.min(bytes[1] & 0x7f, bytes.length - 2) // mostly complete
    check(bytes, 4 + rand(2))
  }
})
