#!/usr/bin/env bash
# Runs every test of the project: sets up the peers, then the Rust workspace's tests, then the
# browser tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo test --workspace --locked
# rallymq.js: codec vectors, size limit and end-to-end tests against the broker (node --test).
(cd web && npm test)
# Browser tests: the demos and rallymq.js in headless Chromium against the broker, paho-mqtt
# and Mosquitto (a missing browser fails them).
(cd web/e2e && npm test)
