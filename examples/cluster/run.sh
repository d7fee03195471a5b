#!/usr/bin/env bash
# Three NATS servers routed as one JetStream cluster and three rallymq nodes, one per server, all
# on this machine (issue 17; what crosses nodes: crates/broker/CLUSTER.md). Ctrl-C stops them all.
#
#   cargo build --release -p rallymq
#   examples/cluster/run.sh [path/to/rallymq]
#   mosquitto_sub -p 1884 -t 'demo/#' -v &          # a subscriber on node 2
#   mosquitto_pub -p 1883 -t demo/hello -m 'from 1'  # a publisher on node 1
#
# MQTT on 1883, 1884, 1885 (WebSockets on 8080, 8081, 8082); NATS clients on 4222-4224, routes
# on 6222-6224, monitoring on 8222-8224. The stream of QoS 1/2 messages keeps a copy on each of
# the three servers (--cluster-replicas 3). Everything in a temporary directory, removed at exit.
set -euo pipefail
rallymq=${1:-target/release/rallymq}
nats=$(command -v nats-server || echo /usr/sbin/nats-server)
[ -x "$rallymq" ] || { echo "no rallymq binary at $rallymq (cargo build --release -p rallymq)"; exit 1; }
[ -x "$nats" ] || { echo "no nats-server (apt-get install nats-server)"; exit 1; }

dir=$(mktemp -d)
pids=()
stop() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap stop EXIT INT TERM

routes='"nats://127.0.0.1:6222", "nats://127.0.0.1:6223", "nats://127.0.0.1:6224"'
for i in 0 1 2; do
  cat > "$dir/nats$i.conf" <<CONF
server_name: nats$i
listen: "127.0.0.1:$((4222 + i))"
http: "127.0.0.1:$((8222 + i))"
jetstream { store_dir: "$dir/js$i" }
cluster { name: rallymq-example, listen: "127.0.0.1:$((6222 + i))", routes: [$routes] }
CONF
  "$nats" -c "$dir/nats$i.conf" > "$dir/nats$i.log" 2>&1 &
  pids+=($!)
done

# A node refuses to start without a NATS server to talk to: wait for them to listen (a node
# then waits a few seconds itself for JetStream to elect its leader).
for i in 0 1 2; do
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$((4222 + i))") 2>/dev/null && break
    sleep 0.1
  done
done
for i in 0 1 2; do
  "$rallymq" broker --in-memory --node-id "node$((i + 1))" \
    --tcp "127.0.0.1:$((1883 + i))" --ws "127.0.0.1:$((8080 + i))" \
    --cluster "nats://127.0.0.1:$((4222 + i)),nats://127.0.0.1:$((4222 + (i + 1) % 3))" \
    --cluster-replicas 3 \
    > "$dir/node$((i + 1)).log" 2>&1 &
  pids+=($!)
done
echo "nodes on MQTT 1883, 1884, 1885; logs in $dir; Ctrl-C stops"
wait -n || { echo "a process stopped; its log:"; tail -n 20 "$dir"/*.log; exit 1; }
