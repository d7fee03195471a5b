#!/usr/bin/env bash
# Runs every test of the project: sets up the peers, then the Rust workspace's tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo test --workspace --locked
# rallymq.js: codec vectors, size limit and end-to-end tests against the broker (node --test).
(cd web && npm test)
