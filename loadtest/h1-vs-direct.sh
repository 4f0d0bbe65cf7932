#!/usr/bin/env bash
# Plain HTTP/1.1 proxying, gateway vs. straight to the upstream, same machine, interleaved:
#   bash loadtest/h1-vs-direct.sh [RUNS=5]        (TENANTS=10000 to configure that many tenants)
# Upstream: nginx (one worker, `return 200` with a 100-byte body) on 127.0.0.1:19000, pinned to
# CPU 0 with wrk; the gateway on CPU 1, plain listener 127.0.0.1:18080, one tenant by Host.
# Needs: nginx, wrk (apt-get install -y nginx wrk); a release build (cargo build --release).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
OUT=loadtest/results/h1-vs-direct-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
source loadtest/lib.sh
start_upstream 19000
cat > "$work/gateway.yaml" <<YAML
version: 1
listeners: [ { name: http, bind: "127.0.0.1:18080" } ]
tenancy: { base_domains: [gw.test], sources: [sni, host] }
signing: { active_key: k1, keys: [ { id: k1, secret_file: $work/signing.key } ] }
plans: { free: { timeouts: { connect_ms: 1000, request_ms: 10000 } } }
upstreams: { shared: { endpoints: ["http://127.0.0.1:19000"] } }
routes: [ { path_prefix: /, upstream: shared } ]
tenants:
  acme: { plan: free }
  globex: { plan: free }
YAML
for i in $(seq 3 "${TENANTS:-2}"); do echo "  t$i: { plan: free, hosts: [api.t$i.example] }"; done >> "$work/gateway.yaml"
start_gateway "$work/gateway.yaml" acme.gw.test

rps() { awk '/Requests\/sec/ {print $2}' "$1"; }
for i in $(seq "$RUNS"); do
  taskset -c 0 wrk -t1 -c64 -d10s http://127.0.0.1:19000/ > "$OUT/direct-$i.txt"
  taskset -c 0 wrk -t1 -c64 -d10s -H 'Host: acme.gw.test' http://127.0.0.1:18080/ > "$OUT/gateway-$i.txt"
  echo "run $i: direct $(rps "$OUT/direct-$i.txt") req/s, gateway $(rps "$OUT/gateway-$i.txt") req/s"
done
d=$(for f in "$OUT"/direct-*.txt; do rps "$f"; done | median)
g=$(for f in "$OUT"/gateway-*.txt; do rps "$f"; done | median)
printf 'median of %s runs: direct %s req/s, gateway %s req/s, ratio %.2f\n' "$RUNS" "$d" "$g" \
  "$(echo "$g / $d" | bc -l)" | tee "$OUT/summary.txt"
