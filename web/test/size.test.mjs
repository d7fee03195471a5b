// The client stays at most 8 KB minified (esbuild) and gzipped (level 9, as `gzip -9`).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { gzipSync } from 'node:zlib'
import { fileURLToPath } from 'node:url'
import { build } from 'esbuild'

const LIMIT = 8192

test('rallymq.js is at most 8 KB minified and gzipped', async () => {
  const result = await build({
    entryPoints: [fileURLToPath(new URL('../rallymq.js', import.meta.url))],
    bundle: false,
    minify: true,
    format: 'esm',
    write: false,
  })
  const minified = result.outputFiles[0].contents
  const gzipped = gzipSync(minified, { level: 9 }).length
  console.log(`rallymq.js: ${minified.length} bytes minified, ${gzipped} bytes gzipped (limit ${LIMIT})`)
  assert.ok(gzipped <= LIMIT, `${gzipped} bytes gzipped, over ${LIMIT}`)
})
