#!/usr/bin/env bash
# Copies the web pages and the browser client from web/ (their source of truth) to
# crates/broker/static/, which the broker embeds: `cargo package` cannot reach files outside
# the crate. crates/broker/tests/static_files.rs fails until this has run after a change.
# A new file also needs its line in ASSETS (crates/broker/src/listener.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
static=crates/broker/static
rm -rf "$static"
mkdir -p "$static"
cp web/index.html web/rallymq.js "$static/"
cp -R web/tennis web/dashboard "$static/"
echo "synced web/ to $static/"
