#!/usr/bin/env bash
# The gateway against nginx and HAProxy with the benchmark harness (BENCH_SH; the method is in
# docs/performance.md), every tenant feature on (loadtest/bench-gateway.sh), a JWT on every request.
#
#   bash loadtest/compare.sh [RUNS=3] [CANDIDATES... (default: nginx1 haproxy1 custom)] [--publish]
#   bash loadtest/compare.sh --table RESULTS.csv      the table again, from an earlier run
#
# Builds the release binary and benchmarks a frozen copy of it (a rebuild during the run changes
# nothing); checks first that the token is accepted and a bad one refused. The harness's results
# are copied to loadtest/results/compare-<stamp>/ with compare.txt (the table printed at the
# end), meta.txt and chart.png (loadtest/chart.py). --publish also copies the chart to
# docs/bench.png.
# Env: TENANTS    filler tenants in the gateway's config (default 10; try 10000)
#      TESTS      subset of the harness's tests (default: h1 h1tls h2tls h1rate h2rate hs hsfull)
#      DUR        seconds per test (harness default 10); any other harness variable passes through
#      BENCH_SH   the harness script (required; docs/performance.md describes what it does)
#      GATEWAY_BIN  benchmark this binary instead of building target/release/tenant-gateway
#      NO_BUILD=1 skip cargo build
# Needs root (the harness uses a mount namespace), nginx wrk nghttp2-client haproxy
# (apt-get install -y nginx wrk nghttp2-client haproxy), python3; matplotlib for the chart.
# Ports 127.0.0.1:18080, :18443, :19000 must be free (the harness would otherwise measure
# whatever answers there).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

table() { # results.csv -> the comparison table on stdout
  python3 - "$1" "${TENANTS:-10}" <<'PY'
import csv, math, statistics as st, sys
rows = list(csv.DictReader(open(sys.argv[1])))
tenants = int(sys.argv[2])
num = lambda x: float(x) if x not in ("NA", "", None) else math.nan
def med(g, k):
    v = [num(r[k]) for r in g if not math.isnan(num(r[k]))]
    return st.median(v) if v else math.nan
def spread(g, k):
    v = [num(r[k]) for r in g if not math.isnan(num(r[k]))]
    return (max(v) - min(v)) / st.median(v) * 100 if len(v) > 1 and st.median(v) else math.nan
cands = list(dict.fromkeys(r["cand"] for r in rows))
tests = list(dict.fromkeys(r["test"] for r in rows))
RATE = {"h1rate", "h2rate"}          # fixed 5,000 req/s: latency is the figure, not req/s
M = {}
for c in cands:
    for t in tests:
        g = [r for r in rows if r["cand"] == c and r["test"] == t]
        if g:
            M[c, t] = dict(n=len(g), rps=med(g, "rps"), spread=spread(g, "rps"), p50=med(g, "p50_ms"),
                           p99=med(g, "p99_ms"), cpu=med(g, "cpu_ms_per_10k"), rss=med(g, "rss_kb") / 1024,
                           err=sum(num(r["errors"]) for r in g if not math.isnan(num(r["errors"]))))
def ratio(c, ref, t, k):
    a, b = M.get((c, t), {}).get(k, math.nan), M.get((ref, t), {}).get(k, math.nan)
    return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan
def f(v, spec):
    if isinstance(v, float) and math.isnan(v):
        return "-".rjust(int(spec.split(".")[0] or 0))
    return format(v, spec)
refs = [r for r in ("nginx1", "haproxy1") if r in cands]
hdr = (f"{'test':7} {'cand':9} {'n':>2} {'req/s':>9} {'spr%':>5} {'p50 ms':>7} {'p99 ms':>7} {'cpu/10k':>8} "
       f"{'RSS MB':>6} {'err':>6}")
for ref in refs:
    short = {"nginx1": "ngx1", "haproxy1": "hap1"}[ref]
    hdr += f" {'key/' + short:>9} {'cpu/' + short:>9}"
print(hdr)
print("-" * len(hdr))
for t in tests:
    for c in cands:
        m = M.get((c, t))
        if not m: continue
        line = (f"{t:7} {c:9} {m['n']:>2} {f(m['rps'], '9.0f')} {f(m['spread'], '5.1f')} {f(m['p50'], '7.3f')} "
                f"{f(m['p99'], '7.3f')} {f(m['cpu'], '8.1f')} {f(m['rss'], '6.1f')} {m['err']:6.0f}")
        for ref in refs:
            key = "p99" if t in RATE else "rps"
            line += (f" {'' if c == ref else f(ratio(c, ref, t, key), '.2f'):>9}"
                     f" {'' if c == ref else f(ratio(c, ref, t, 'cpu'), '.2f'):>9}")
        print(line)
print("key/ngx1, key/hap1: req/s ratio to nginx1 / haproxy1 (higher is better), except h1rate/h2rate:"
      " p99 ratio at the fixed rate (lower is better);\ncpu/...: ratio of proxy CPU ms per 10k requests"
      " (lower is better). spr%: (max-min)/median of req/s over the runs.")
print("req/s of hsfull is client-bound: read its cpu/10k (proxy CPU per 10k full handshakes).")

if "custom" in cands and refs:
    print("\nThe bar (docs/performance.md), custom vs the same run:")
    def bar(label, v, ok):
        if math.isnan(v): return   # test not in this run
        print(f"  {label:62} {f(v, '.2f'):>6}  {'-' if math.isnan(v) else ('PASS' if ok(v) else 'FAIL')}")
    for t in ("h1", "h1tls", "h2tls"):
        if "nginx1" in refs: bar(f"{t} req/s x nginx1 >= 1.20", ratio("custom", "nginx1", t, "rps"), lambda v: v >= 1.2)
        if "haproxy1" in refs: bar(f"{t} req/s x haproxy1 >= 1.10", ratio("custom", "haproxy1", t, "rps"), lambda v: v >= 1.1)
    for t in ("h1", "h1tls", "h2tls", "h1rate", "h2rate"):
        for ref in refs:
            bar(f"{t} cpu/10k x {ref} < 1.00", ratio("custom", ref, t, "cpu"), lambda v: v < 1.0)
    if "nginx1" in refs:
        for t in ("h1rate", "h2rate"):
            bar(f"{t} p99 x nginx1 <= 1.00", ratio("custom", "nginx1", t, "p99"), lambda v: v <= 1.0)
        bar("hs (resumed handshakes/s) x nginx1 >= 1.00", ratio("custom", "nginx1", "hs", "rps"), lambda v: v >= 1.0)
        bar("hsfull cpu per full handshake x nginx1 <= 1.00", ratio("custom", "nginx1", "hsfull", "cpu"), lambda v: v <= 1.0)
    rss = max((m["rss"] for (c, t), m in M.items() if c == "custom" and not math.isnan(m["rss"])), default=math.nan)
    label = f"max RSS MB <= 30 ({tenants} filler tenants{'' if tenants >= 10000 else '; the bar is for 10,000'})"
    print(f"  {label:62} {f(rss, '.1f'):>6}  {'-' if math.isnan(rss) else ('PASS' if rss <= 30 else 'FAIL')}")
PY
}

publish=0; args=()
while [ $# -gt 0 ]; do
  case $1 in
    --publish) publish=1 ;;
    --table) table "$2"; exit ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) args+=("$1") ;;
  esac
  shift
done
RUNS=${args[0]:-3}
cands=("${args[@]:1}")
[ ${#cands[@]} -gt 0 ] || cands=(nginx1 haproxy1 custom)
BENCH_SH=${BENCH_SH:-}
[ -f "$BENCH_SH" ] || { echo "set BENCH_SH to the benchmark harness script (docs/performance.md)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "the harness needs root (unshare -m)" >&2; exit 1; }
for p in 18080 18443 19000; do
  if ss -Hltn "sport = :$p" | grep -q .; then
    echo "127.0.0.1:$p is in use (another benchmark or load test?): $(ss -Hltnp "sport = :$p" | head -1)" >&2
    exit 1
  fi
done

stamp=$(date +%Y%m%d-%H%M%S)
OUT=loadtest/results/compare-$stamp
export TENANTS=${TENANTS:-10}
export ROOT=${ROOT:-${TMPDIR:-/tmp}/gw-bench}     # the harness's own default
HOUT=$ROOT/results/compare-$stamp

# Freeze the binary: others may rebuild target/release while this runs.
tmp=$(mktemp -d)
gw_pid=""
cleanup() { [ -z "$gw_pid" ] || kill "$gw_pid" 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT
if [ -z "${GATEWAY_BIN:-}" ]; then
  [ "${NO_BUILD:-0}" = 1 ] || cargo build --release --bin tenant-gateway
  GATEWAY_BIN=target/release/tenant-gateway
fi
cp "$GATEWAY_BIN" "$tmp/tenant-gateway"
export GATEWAY_BIN=$tmp/tenant-gateway
TOKEN=$(bash loadtest/bench-gateway.sh --token acme)

# Preflight: the config compiles, the token is accepted (502 here: no upstream yet) and a bad one
# refused (401), so that a benchmark of 401s cannot pass for a benchmark of the gateway.
GW_WORKDIR=$tmp/pre bash loadtest/bench-gateway.sh > "$tmp/pre.log" 2>&1 & gw_pid=$!
code() { curl -s -o /dev/null -w '%{http_code}' -H 'Host: acme.gw.test' -H "Authorization: Bearer $1" http://127.0.0.1:18080/ || true; }
for _ in $(seq 100); do [ "$(code "$TOKEN")" != 000 ] && break; sleep 0.1; done
good=$(code "$TOKEN"); bad=$(code "${TOKEN%.*}.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
kill "$gw_pid"; wait "$gw_pid" 2>/dev/null || true; gw_pid=""
if [[ $good != 502 && $good != 200 ]] || [ "$bad" != 401 ]; then
  echo "preflight failed: valid token -> $good (want 502/200), bad token -> $bad (want 401)" >&2
  cat "$tmp/pre.log" >&2; exit 1
fi
echo "preflight: token accepted ($good without upstream), bad token refused ($bad); $TENANTS filler tenants"

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
CUSTOM_CMD="bash '$repo/loadtest/bench-gateway.sh'" EXTRA_HEADER="Authorization: Bearer $TOKEN" \
  H1_HOST=acme.gw.test H2_HOST=acme.gw.test HS_HOST=acme.gw.test OUT=$HOUT \
  bash "$BENCH_SH" "$RUNS" "${cands[@]}"
mkdir -p "$OUT"
cp -r "$HOUT/." "$OUT/"
cp "$ROOT/run/custom.out" "$OUT/gateway.log" 2>/dev/null || true   # the gateway's stderr (last run)
{
  echo "date: $stamp"
  echo "runs: $RUNS; candidates: ${cands[*]}; tests: ${TESTS:-harness default}; dur: ${DUR:-10}s"
  echo "filler tenants: $TENANTS (+ acme globex initech); token: HS256 JWT for acme on every request"
  echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo ' + uncommitted changes in src/Cargo')"
  echo "binary sha256: $(sha256sum "$GATEWAY_BIN" | cut -c1-16)"
  echo "loadavg before: $load_before; after: $(cut -d' ' -f1-3 /proc/loadavg); cores: $(nproc)"
} > "$OUT/meta.txt"
{ cat "$OUT/meta.txt"; echo; table "$OUT/results.csv"; } | tee "$OUT/compare.txt"

python3 -c 'import matplotlib' 2>/dev/null || python3 -m pip install -q matplotlib || true
if python3 loadtest/chart.py "$OUT/results.csv" "$OUT/chart.png"; then
  echo "chart: $OUT/chart.png"
  if [ "$publish" = 1 ]; then mkdir -p docs && cp "$OUT/chart.png" docs/bench.png && echo "published: docs/bench.png"; fi
else
  echo "no chart (matplotlib missing?)" >&2
fi
echo "results: $OUT"
