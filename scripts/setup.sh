#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine (idempotent: skips what is there).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi

# Rust components and the wasm target the protocol crates are checked against.
rustup component add rustfmt clippy >/dev/null 2>&1 || true
rustup target add wasm32-unknown-unknown >/dev/null 2>&1 || true

# Python peers for interop tests.
python3 -m pip install --quiet --disable-pip-version-check -r scripts/requirements.txt
