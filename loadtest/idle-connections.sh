#!/usr/bin/env bash
# Memory per idle keep-alive client, side by side with nginx, and service beside many idle ones.
#
#   bash loadtest/idle-connections.sh [N=5000]
#     CANDIDATES="gateway nginx"  MODES="plain tls"  RUNS=3   (defaults)
#   MIXED=1 bash loadtest/idle-connections.sh [N=15000]     (CANDIDATES too)
#
# Idle: each of N keep-alive connections sends one request, reads the answer and goes quiet;
# the server's RSS is read before and after (after 5 s: parking has happened, and the upstream
# connections the opening burst left idle have passed the pool's 4 s idle timeout, as nginx
# keeps at most its `keepalive 64`) and the growth divided by N. Candidates run one after another, interleaved RUNS times; the table
# shows medians. nginx is one worker proxying to the same upstream (keep-alive to it), with
# the gateway's dev certificate for TLS.
#
# MIXED=1: wrk drives 64 busy connections for 10 s with and without N idle plain connections
# held open (interleaved RUNS times), and a fresh client's time to answer is taken while the
# idle ones are open. Loopback only; stops everything it started. Needs nginx, wrk, python3,
# curl and a release build (cargo build --release).
set -euo pipefail
cd "$(dirname "$0")/.."
MIXED=${MIXED:-0}
N=${1:-$([ "$MIXED" = 1 ] && echo 15000 || echo 5000)}
RUNS=${RUNS:-3}
CANDIDATES=${CANDIDATES:-gateway nginx}
MODES=${MODES:-plain tls}
OUT=loadtest/results/idle-connections-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
source loadtest/lib.sh
ulimit -n $((N * 2 + 4096)) 2>/dev/null || ulimit -n "$(ulimit -Hn)"
start_upstream 19000
"$BIN" dev-certs --out "$work/certs" --domain gw.test --tenant acme >/dev/null
cat > "$work/gateway.yaml" <<YAML
version: 1
listeners:
  - { name: http, bind: "127.0.0.1:18080" }
  - { name: https, bind: "127.0.0.1:18443", tls: true }
limits: { header_timeout_ms: 120000, idle_timeout_ms: 120000, max_connections: $((N + 1000)) }
tls: { default_certificate: { cert: $work/certs/default.crt, key: $work/certs/default.key } }
tenancy: { base_domains: [gw.test], sources: [sni, host] }
signing: { active_key: k1, keys: [ { id: k1, secret_file: $work/signing.key } ] }
upstreams: { shared: { endpoints: ["http://127.0.0.1:19000"] } }
routes: [ { path_prefix: /, upstream: shared } ]
tenants: { acme: { plan: free, tls: { cert: $work/certs/acme.crt, key: $work/certs/acme.key } } }
plans: { free: {} }
YAML
cat > "$work/proxy.conf" <<NGX
worker_processes 1;
daemon off;
pid $work/proxy.pid;
error_log $work/proxy-error.log;
events { worker_connections $((N + 1000)); }
http {
  access_log off;
  keepalive_timeout 120s;
  keepalive_requests 1000000;
  client_header_timeout 120s;
  upstream up { server 127.0.0.1:19000; keepalive 64; }
  server {
    listen 127.0.0.1:18080;
    listen 127.0.0.1:18443 ssl;
    ssl_certificate $work/certs/acme.crt;
    ssl_certificate_key $work/certs/acme.key;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
NGX

# start CANDIDATE: sets $server_pid (the process whose RSS counts: nginx's worker).
start() {
  case $1 in
    gateway)
      # Access log off, as nginx's is.
      RUST_LOG=warn start_gateway "$work/gateway.yaml" acme.gw.test
      server_pid=${pids[-1]} ;;
    nginx)
      taskset -c 1 nginx -c "$work/proxy.conf" -p "$work" & pids+=($!)
      for _ in $(seq 50); do curl -sf -o /dev/null -H "Host: acme.gw.test" http://127.0.0.1:18080/ && break; sleep 0.1; done
      server_pid=$(pgrep -P "${pids[-1]}" | head -1) ;;
  esac
}
stop() {
  kill "${pids[-1]}" 2>/dev/null || true; wait "${pids[-1]}" 2>/dev/null || true; unset 'pids[-1]'
  for _ in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:18080/ || break; sleep 0.1; done
}

# hold N MODE READY DONE: opens N keep-alive connections (each sends one request), touches
# READY, keeps them until DONE exists. Prints nothing.
hold() {
  python3 - "$@" <<'PY'
import asyncio, os, ssl, sys
n, mode, ready, done = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(["http/1.1"])
req = b"GET / HTTP/1.1\r\nHost: acme.gw.test\r\n\r\n"
async def one():
    if mode == "tls":
        r, w = await asyncio.open_connection("127.0.0.1", 18443, ssl=ctx, server_hostname="acme.gw.test")
    else:
        r, w = await asyncio.open_connection("127.0.0.1", 18080)
    w.write(req); await w.drain()
    head = await r.readuntil(b"\r\n\r\n")
    length = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
    await r.readexactly(length)
    return r, w
async def main():
    conns, sem = [], asyncio.Semaphore(200)
    async def guarded():
        async with sem:
            conns.append(await one())
    await asyncio.gather(*(guarded() for _ in range(n)))
    open(ready, "w").write(str(len(conns)))
    while not os.path.exists(done):
        await asyncio.sleep(0.2)
    for _, w in conns: w.close()
asyncio.run(main())
PY
}
rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
wait_for() { for _ in $(seq 600); do [ -e "$1" ] && return 0; sleep 0.1; done; echo "timed out waiting for $1" >&2; return 1; }

if [ "$MIXED" != 1 ]; then
  : > "$OUT/runs.txt"
  for run in $(seq "$RUNS"); do
    for c in $CANDIDATES; do
      for mode in $MODES; do
        start "$c"
        before=$(rss "$server_pid")
        rm -f "$work/ready" "$work/done"
        hold "$N" "$mode" "$work/ready" "$work/done" & holder=$!
        wait_for "$work/ready"
        sleep 5
        held=$(rss "$server_pid"); opened=$(cat "$work/ready")
        touch "$work/done"; wait "$holder" || true
        per=$(( (held - before) * 1024 / opened ))
        echo "$run $c $mode $opened $before $held $per" | tee -a "$OUT/runs.txt"
        stop
      done
    done
  done
  {
    echo "RSS growth per idle keep-alive connection, N=$N, median of $RUNS (bytes):"
    printf '%-10s' ""; for mode in $MODES; do printf '%12s' "$mode"; done; echo
    for c in $CANDIDATES; do
      printf '%-10s' "$c"
      for mode in $MODES; do printf '%12s' "$(awk -v c="$c" -v m="$mode" '$2==c && $3==m {print $7}' "$OUT/runs.txt" | median)"; done
      echo
    done
  } | tee "$OUT/summary.txt"
  exit 0
fi

# MIXED: busy connections with and without N idle ones, interleaved, for each candidate (nginx
# is the yardstick: what N idle sockets cost the machine itself, whoever serves them).
command -v wrk >/dev/null || { echo "needs wrk" >&2; exit 1; }
busy() {
  taskset -c 0 wrk -t1 -c64 -d10s --latency -H "Host: acme.gw.test" http://127.0.0.1:18080/ > "$work/wrk.txt"
  rps=$(awk '/^Requests\/sec/ {print $2}' "$work/wrk.txt")
  p99=$(awk '$1=="99%" {v=$2; if (v ~ /ms$/) {sub(/ms/,"",v); print v} else if (v ~ /us$/) {sub(/us/,"",v); print v/1000} else {sub(/s/,"",v); print v*1000}}' "$work/wrk.txt")
  echo "$rps $p99"
}
: > "$OUT/mixed.txt"
for run in $(seq "$RUNS"); do
  for c in $CANDIDATES; do
    start "$c"
    read -r rps p99 < <(busy)
    echo "$run $c without $rps $p99 -" | tee -a "$OUT/mixed.txt"
    rm -f "$work/ready" "$work/done"
    taskset -c 0 bash -c "$(declare -f hold); hold $N plain $work/ready $work/done" & holder=$!
    wait_for "$work/ready"; sleep 2
    fresh=$(curl -s -o /dev/null -w '%{time_total}' -H "Host: acme.gw.test" http://127.0.0.1:18080/)
    read -r rps p99 < <(busy)
    echo "$run $c with $rps $p99 $(awk -v t="$fresh" 'BEGIN {printf "%.2f", t*1000}')" | tee -a "$OUT/mixed.txt"
    touch "$work/done"; wait "$holder" || true
    stop
  done
done
{
  echo "64 busy connections (wrk, 10 s), without and with $N idle ones, median of $RUNS interleaved runs:"
  for c in $CANDIDATES; do
    col() { awk -v c="$c" -v k="$1" -v f="$2" '$2==c && $3==k {print $f}' "$OUT/mixed.txt" | median; }
    w_rps=$(col without 4); i_rps=$(col with 4); w_p99=$(col without 5); i_p99=$(col with 5); fresh=$(col with 6)
    echo "  $c: $w_rps -> $i_rps req/s (x$(awk -v a="$i_rps" -v b="$w_rps" 'BEGIN {printf "%.3f", a/b}')), p99 $w_p99 -> $i_p99 ms (x$(awk -v a="$i_p99" -v b="$w_p99" 'BEGIN {printf "%.3f", a/b}')); a fresh client answered in $fresh ms"
  done
} | tee "$OUT/summary.txt"
