#!/usr/bin/env bash
# Plain HTTP/1.1 proxying, gateway vs. straight to the upstream, same machine, interleaved:
#   bash loadtest/h1-vs-direct.sh [RUNS=5]
# Upstream: nginx (one worker, `return 200` with a 100-byte body) on 127.0.0.1:19000, pinned to
# CPU 0 with wrk; the gateway on CPU 1, plain listener 127.0.0.1:18080, one tenant by Host.
# Needs: nginx, wrk (apt-get install -y nginx wrk); a release build (cargo build --release).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
BIN=${BIN:-target/release/tenant-gateway}
OUT=loadtest/results/h1-vs-direct-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

body=$(printf 'x%.0s' $(seq 1 100))
cat > "$work/nginx.conf" <<NGX
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:19000; location / { return 200 "$body"; } }
}
NGX
taskset -c 0 nginx -c "$work/nginx.conf" -p "$work" & pids+=($!)

head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$work/signing.key"
cat > "$work/gateway.yaml" <<YAML
version: 1
listeners: [ { name: http, bind: "127.0.0.1:18080" } ]
tenancy: { base_domains: [gw.test], sources: [sni, host] }
signing: { active_key: k1, keys: [ { id: k1, secret_file: $work/signing.key } ] }
plans: { free: { timeouts: { connect_ms: 1000, request_ms: 10000 } } }
upstreams: { shared: { endpoints: ["http://127.0.0.1:19000"] } }
routes: [ { path_prefix: /, upstream: shared } ]
tenants: { acme: { plan: free }, globex: { plan: free } }
YAML
RUST_LOG=warn taskset -c 1 "$BIN" run --config "$work/gateway.yaml" & pids+=($!)
for _ in $(seq 50); do curl -sf -o /dev/null -H 'Host: acme.gw.test' http://127.0.0.1:18080/ && break; sleep 0.1; done

rps() { awk '/Requests\/sec/ {print $2}' "$1"; }
for i in $(seq "$RUNS"); do
  taskset -c 0 wrk -t1 -c64 -d10s http://127.0.0.1:19000/ > "$OUT/direct-$i.txt"
  taskset -c 0 wrk -t1 -c64 -d10s -H 'Host: acme.gw.test' http://127.0.0.1:18080/ > "$OUT/gateway-$i.txt"
  echo "run $i: direct $(rps "$OUT/direct-$i.txt") req/s, gateway $(rps "$OUT/gateway-$i.txt") req/s"
done
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
d=$(for f in "$OUT"/direct-*.txt; do rps "$f"; done | median)
g=$(for f in "$OUT"/gateway-*.txt; do rps "$f"; done | median)
printf 'median of %s runs: direct %s req/s, gateway %s req/s, ratio %.2f\n' "$RUNS" "$d" "$g" \
  "$(echo "$g / $d" | bc -l)" | tee "$OUT/summary.txt"
