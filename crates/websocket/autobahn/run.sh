#!/usr/bin/env bash
# Runs the Autobahn|Testsuite, cases 1-7, 9 and 10 (all of sections 1 to 10; there is no 8), and
# fails unless every case is OK, strict. The three cases the suite only ever grades
# INFORMATIONAL (7.1.6, 7.13.1, 7.13.2) are accepted as such.
#
#   run.sh [server]   the fuzzing client against the ws_echo example (our server role)
#   run.sh client     the fuzzing server against `ws_client --autobahn` (our client role)
#
# wstest is Python 2 only: `pip install autobahntestsuite` under a Python 2.7 (here through
# pyenv: `PYENV_VERSION=2.7.18 python -m pip install autobahntestsuite`), or put a `wstest` on
# PATH. Set WSTEST to override. Reports go to $OUT (default target/autobahn/MODE).
set -euo pipefail
mode="${1:-server}"
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
out="${OUT:-$root/target/autobahn/$mode}"
port="${PORT:-9001}"

if [ -n "${WSTEST:-}" ]; then
    wstest=("$WSTEST")
elif command -v pyenv >/dev/null && PYENV_VERSION=2.7.18 pyenv which wstest >/dev/null 2>&1; then
    wstest=(env PYENV_VERSION=2.7.18 "$(PYENV_VERSION=2.7.18 pyenv which wstest)")
elif command -v wstest >/dev/null; then
    wstest=(wstest)
else
    echo "wstest not found: install autobahntestsuite under Python 2.7 (see this script's header)" >&2
    exit 1
fi

cd "$root"
cargo build --release --locked -p rallymq-examples --example ws_echo --example ws_client
examples="${CARGO_TARGET_DIR:-$root/target}/release/examples"
mkdir -p "$out"
pids=()
trap 'for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done' EXIT

case "$mode" in
server)
    "$examples/ws_echo" "127.0.0.1:$port" 2>"$out/ws_echo.log" &
    pids+=($!)
    sleep 1
    sed -e "s#\"./reports/servers\"#\"$out/reports\"#" -e "s#127.0.0.1:9001#127.0.0.1:$port#" \
        "$here/fuzzingclient.json" >"$out/fuzzingclient.json"
    (cd "$out" && "${wstest[@]}" -m fuzzingclient -s "$out/fuzzingclient.json" >"$out/wstest.log" 2>&1)
    ;;
client)
    sed -e "s#\"./reports/clients\"#\"$out/reports\"#" -e "s#127.0.0.1:9001#127.0.0.1:$port#" \
        "$here/fuzzingserver.json" >"$out/fuzzingserver.json"
    (cd "$out" && exec "${wstest[@]}" -m fuzzingserver -s "$out/fuzzingserver.json" >"$out/wstest.log" 2>&1) &
    pids+=($!)
    for _ in $(seq 50); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.2
    done
    "$examples/ws_client" --autobahn "127.0.0.1:$port"
    ;;
*)
    echo "usage: $0 [server|client]" >&2
    exit 2
    ;;
esac

python3 - "$out/reports/index.json" <<'EOF'
import collections, json, sys
results = json.load(open(sys.argv[1]))["rallymq-websocket"]
informational = {"7.1.6", "7.13.1", "7.13.2"}
bad = {case: r for case, r in results.items()
       if not ((r["behavior"], r["behaviorClose"]) == ("OK", "OK")
               or (case in informational and r["behavior"] == "INFORMATIONAL"))}
counts = collections.Counter(r["behavior"] for r in results.values())
print(f"{len(results)} cases: {dict(counts)}")
for case in sorted(bad, key=lambda c: [int(p) for p in c.split(".")]):
    print(f"  {case}: {bad[case]['behavior']} / close {bad[case]['behaviorClose']}")
sys.exit(1 if bad or len(results) < 301 else 0)
EOF
