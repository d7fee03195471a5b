#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine (idempotent: skips what is there).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi

# Rust components and the wasm target the protocol crates are checked against.
rustup component add rustfmt clippy >/dev/null 2>&1 || true
rustup target add wasm32-unknown-unknown >/dev/null 2>&1 || true

# make, which the jemalloc allocator of the broker binary needs to build its C sources.
if ! command -v make >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq make >/dev/null
fi

# Python peers for interop tests, and prometheus-client, whose parser reads /metrics in a test.
python3 -m pip install --quiet --disable-pip-version-check -r scripts/requirements.txt

# Mosquitto (the reference broker) and its command-line clients, for the broker's interop tests.
# (Debian puts mosquitto in /usr/sbin, which may not be on a user's PATH.)
if ! { command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ]; } \
  || ! command -v mosquitto_pub >/dev/null || ! command -v mosquitto_sub >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq mosquitto mosquitto-clients >/dev/null
fi

# nats-server (Debian's package, 2.9 with JetStream) for the cluster tests (crates/broker/tests/
# cluster.rs start their own servers on free ports; the package's systemd unit is not needed).
# (Debian puts nats-server in /usr/sbin too.)
if ! { command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ]; }; then
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq nats-server >/dev/null
fi
# kill(1) (procps) pauses and resumes a NATS server in the cluster tests (SIGSTOP/SIGCONT).
if [ ! -x /usr/bin/kill ] && [ ! -x /bin/kill ]; then
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq procps >/dev/null
fi

# MQTT.js (npm mqtt, pinned by package-lock.json) for the broker's interop tests.
(cd crates/broker/tests/interop && npm ci --no-audit --no-fund --loglevel=error >/dev/null)

# esbuild and ws (pinned by web/package-lock.json) for rallymq.js's tests in web/test.
(cd web && npm ci --no-audit --no-fund --loglevel=error >/dev/null)

# Headless Chromium (Debian's package) and playwright-core (pinned by web/e2e/package-lock.json)
# for the browser tests in web/e2e. playwright-core downloads no browser of its own.
if [ ! -x /usr/bin/chromium ]; then
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq chromium >/dev/null
fi
(cd web/e2e && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
