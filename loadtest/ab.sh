#!/usr/bin/env bash
# Two gateway binaries, same bench config (loadtest/bench-gateway.sh: JWT on every request,
# signing, rate limit never hit), interleaved runs: the quick side-by-side for one change.
#   bash loadtest/ab.sh A_BIN B_BIN [RUNS=5] [plain|tls] [SECONDS=10]
# Upstream: nginx (one worker, 100-byte body) on 127.0.0.1:19000 pinned to CPU 0 with wrk; the
# gateway on CPU 1. Prints per run and the medians: req/s, p99 and the gateway's user and
# kernel CPU ms per 10k requests (from /proc). Needs nginx, wrk, python3; loopback only.
# GW_CPUS=0,1 runs the gateways over both cores (sharing CPU 0 with wrk and the upstream: compare
# the two binaries' ratio, not the figures).
set -euo pipefail
cd "$(dirname "$0")/.."
A=$(realpath "$1"); B=$(realpath "$2"); RUNS=${3:-5}; MODE=${4:-plain}; SECS=${5:-10}
OUT=loadtest/results/ab-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
source loadtest/lib.sh
start_upstream 19000
export GW_WORKDIR=$work/gw
cfg=$(bash loadtest/bench-gateway.sh --write-config)
token=$(bash loadtest/bench-gateway.sh --token acme)
url=http://127.0.0.1:18080/
[ "$MODE" = tls ] && url=https://127.0.0.1:18443/
tck=$(getconf CLK_TCK)

cpu_ticks() { awk '{print $14, $15}' "/proc/$1/stat"; } # utime stime

one() { # label bin run
  RUST_LOG=warn taskset -c "${GW_CPUS:-1}" "$2" run --config "$cfg" 2>> "$work/gateway-$1.log" &
  local gw=$!
  for _ in $(seq 100); do curl -skf -o /dev/null -H "Host: acme.gw.test" -H "Authorization: Bearer $token" "$url" && break; sleep 0.1; done
  taskset -c 0 wrk -t1 -c64 -d2s -H "Host: acme.gw.test" -H "Authorization: Bearer $token" "$url" >/dev/null # warm-up
  read -r u0 s0 < <(cpu_ticks "$gw")
  taskset -c 0 wrk -t1 -c64 -d"${SECS}s" --latency -H "Host: acme.gw.test" -H "Authorization: Bearer $token" "$url" > "$OUT/$1-$3.txt"
  read -r u1 s1 < <(cpu_ticks "$gw")
  kill "$gw"; wait "$gw" 2>/dev/null || true
  python3 - "$OUT/$1-$3.txt" "$((u1 - u0))" "$((s1 - s0))" "$tck" "$1" "$3" >> "$OUT/runs.csv" <<'PY'
import re, sys
f, du, ds, tck, label, run = sys.argv[1:]
t = open(f).read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
reqs = int(re.search(r"(\d+) requests in", t).group(1))
def ms(v):
    n, u = re.match(r"([\d.]+)(\w+)", v).groups()
    return float(n) * {"us": 0.001, "ms": 1, "s": 1000}[u]
p99 = ms(re.search(r"^\s+99%\s+(\S+)", t, re.M).group(1))  # not "+/- Stdev 90.99%"
per = 10000 / reqs * 1000 / int(tck)
print(f"{label},{run},{rps:.0f},{p99:.3f},{int(du) * per:.1f},{int(ds) * per:.1f}")
PY
  tail -1 "$OUT/runs.csv"
}

echo "label,run,rps,p99_ms,user_ms_10k,kernel_ms_10k" > "$OUT/runs.csv"
for i in $(seq "$RUNS"); do
  one A "$A" "$i"
  one B "$B" "$i"
done
python3 - "$OUT/runs.csv" <<'PY' | tee "$OUT/summary.txt"
import csv, statistics as st, sys
rows = list(csv.DictReader(open(sys.argv[1])))
med = {}
for lab in ("A", "B"):
    g = [r for r in rows if r["label"] == lab]
    med[lab] = {k: st.median(float(r[k]) for r in g) for k in ("rps", "p99_ms", "user_ms_10k", "kernel_ms_10k")}
    m = med[lab]
    print(f"{lab}: req/s {m['rps']:.0f}  p99 {m['p99_ms']:.2f} ms  user {m['user_ms_10k']:.1f} + kernel {m['kernel_ms_10k']:.1f} ms per 10k  (median of {len(g)})")
print(f"B/A: req/s x{med['B']['rps'] / med['A']['rps']:.3f}, user CPU x{med['B']['user_ms_10k'] / med['A']['user_ms_10k']:.3f}, kernel x{med['B']['kernel_ms_10k'] / med['A']['kernel_ms_10k']:.3f}")
# Each B run against the A run just before it: robust to the machine drifting during the series.
pairs = {r["run"]: {} for r in rows}
for r in rows:
    pairs[r["run"]][r["label"]] = r
pairs = [p for p in pairs.values() if len(p) == 2]
def pr(k):
    return st.median(float(p["B"][k]) / float(p["A"][k]) for p in pairs)
print(f"B/A run by run (median of {len(pairs)} pairs): req/s x{pr('rps'):.3f}, user CPU x{pr('user_ms_10k'):.3f}, kernel x{pr('kernel_ms_10k'):.3f}")
PY
echo "results: $OUT"
