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
ticks() { awk '{print $14 + $15}' "/proc/$gw/stat"; }
t0=$(ticks)
perf record -F 499 --call-graph dwarf,16384 -p "$gw" -o "$OUT/perf.data" -- sleep "$SECS" 2>/dev/null &
perfpid=$!
taskset -c 0 wrk -t1 -c64 -d"${SECS}s" -H "Host: acme.gw.test" -H "Authorization: Bearer $token" "$url" | tee "$OUT/wrk.txt"
wait "$perfpid" || true
t1=$(ticks)
# Inclusive (children) time per symbol: what each layer costs with everything it calls.
perf report -i "$OUT/perf.data" --children -g none --stdio --sort symbol 2>/dev/null \
  | grep '%' | sed 's/ \+$//' | cut -c1-170 | head -80 | tee "$OUT/report.txt" || true
perf report -i "$OUT/perf.data" --no-children -g none --stdio --sort dso 2>/dev/null \
  | grep '%' | head -6 | tee -a "$OUT/report.txt" || true
# Self time by layer, in µs of CPU per request (the gateway's CPU time over wrk's requests,
# shared out by perf's samples; perf itself adds a few percent).
perf report -i "$OUT/perf.data" --no-children -g none --stdio --sort dso,symbol 2>/dev/null \
  | grep '%' > "$OUT/self.txt"
python3 - "$OUT/self.txt" "$((t1 - t0))" "$(getconf CLK_TCK)" "$(awk '/requests in/ {print $1}' "$OUT/wrk.txt")" <<'PY' | tee "$OUT/layers.txt"
import re, sys
path, ticks, tck, reqs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
us_per_req = ticks / tck * 1e6 / reqs
layers = [
    ("kernel", lambda d, s: d.startswith("[kernel")),
    ("our phases (tenant_gateway)", lambda d, s: "tenant_gateway" in s),
    ("hyper, h2, http, httparse", lambda d, s: re.search(r"\b(hyper|hyper_util|h2|http|httparse)::", s)),
    ("tokio", lambda d, s: "tokio::" in s or "mio::" in s),
    ("TLS and crypto (rustls, aws-lc)", lambda d, s: re.search(r"rustls|aws_lc|jsonwebtoken", s)),
    ("allocation, Bytes, copies", lambda d, s: re.search(r"_rjem|je_|jemalloc|malloc|free|bytes::|memcpy|memmove|memset|alloc::", s)),
    ("libc, other", lambda d, s: True),
]
shares = {name: 0.0 for name, _ in layers}
for line in open(path):
    m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[.\]\s+(.*)", line)
    if not m:
        continue
    pct, dso, sym = float(m.group(1)), m.group(2), m.group(3)
    for name, test in layers:
        if test(dso, sym):
            shares[name] += pct
            break
total = sum(shares.values()) or 1
print(f"CPU per request: {us_per_req:.1f} us ({reqs} requests, {ticks / tck:.2f} s of CPU)")
for name, _ in layers:
    print(f"  {name:34} {shares[name] / total * 100:5.1f} %  {shares[name] / total * us_per_req:5.2f} us")
PY
