#!/usr/bin/env bash
# Where the gateway's time goes: `perf record` of the gateway (bench config: JWT on every
# request, signing, rate limit never hit) under wrk, plain HTTP/1.1 or TLS:
#   bash loadtest/profile.sh [plain|tls] [SECONDS=10]
# Prints wrk's figures and perf's top symbols; perf.data and the report go to
# loadtest/results/profile-<stamp>/. Needs nginx, wrk, perf (linux-perf); a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-plain}; SECS=${2:-10}
OUT=loadtest/results/profile-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
source loadtest/lib.sh
start_upstream 19000
export GW_WORKDIR=$work/gw
bash loadtest/bench-gateway.sh --write-config >/dev/null
RUST_LOG=warn taskset -c 1 "$BIN" run --config "$work/gw/gateway.yaml" 2>> "$work/gateway.log" & pids+=($!)
gw=$!
token=$(bash loadtest/bench-gateway.sh --token acme)
for _ in $(seq 50); do curl -sf -o /dev/null -H "Host: acme.gw.test" http://127.0.0.1:18080/ && break; sleep 0.1; done
url=http://127.0.0.1:18080/
[ "$MODE" = tls ] && url=https://127.0.0.1:18443/
perf record -F 499 --call-graph dwarf,16384 -p "$gw" -o "$OUT/perf.data" -- sleep "$SECS" 2>/dev/null &
perfpid=$!
taskset -c 0 wrk -t1 -c64 -d"${SECS}s" -H "Host: acme.gw.test" -H "Authorization: Bearer $token" "$url" | tee "$OUT/wrk.txt"
wait "$perfpid" || true
# Inclusive (children) time per symbol: what each layer costs with everything it calls.
perf report -i "$OUT/perf.data" --children -g none --stdio --sort symbol 2>/dev/null \
  | grep '%' | sed 's/ \+$//' | cut -c1-170 | head -80 | tee "$OUT/report.txt"
perf report -i "$OUT/perf.data" --no-children -g none --stdio --sort dso 2>/dev/null \
  | grep '%' | head -6 | tee -a "$OUT/report.txt"
