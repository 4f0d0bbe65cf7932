#!/usr/bin/env bash
# Memory per idle client connection, and service for others while they sit there:
#   bash loadtest/idle-connections.sh [N=10000]     (MODE=plain|tls|mixed, default mixed)
# Opens N keep-alive connections to the gateway (half plain HTTP/1.1, half TLS; each has sent
# one request and then goes quiet), reads the gateway's RSS before and after, then checks that
# a fresh client is still answered and how fast. Loopback only; stops everything it started.
# Needs: nginx, python3, curl; a release build (cargo build --release).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000}
OUT=loadtest/results/idle-connections-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
source loadtest/lib.sh
ulimit -n $((N * 2 + 1024)) 2>/dev/null || true
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
start_gateway "$work/gateway.yaml" acme.gw.test
gw_pid=${pids[-1]}
rss() { awk '/^VmRSS/ {print $2}' "/proc/$gw_pid/status"; }
before=$(rss)
python3 - "$N" "$gw_pid" "$OUT" "${MODE:-mixed}" <<'PY'
import asyncio, ssl, sys, time, subprocess
n, pid, out, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(["http/1.1"])
req = b"GET / HTTP/1.1\r\nHost: acme.gw.test\r\n\r\n"
async def one(i):
    if mode == "tls" or (mode == "mixed" and i % 2):
        r, w = await asyncio.open_connection("127.0.0.1", 18443, ssl=ctx, server_hostname="acme.gw.test")
    else:
        r, w = await asyncio.open_connection("127.0.0.1", 18080)
    w.write(req); await w.drain()
    head = await r.readuntil(b"\r\n\r\n")
    length = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
    await r.readexactly(length)
    return r, w
def rss():
    return int([l.split()[1] for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")][0])
async def main():
    conns, sem = [], asyncio.Semaphore(200)
    async def guarded(i):
        async with sem:
            conns.append(await one(i))
    await asyncio.gather(*(guarded(i) for i in range(n)))
    await asyncio.sleep(1)
    held = rss()
    t = time.perf_counter()
    probe = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Host: acme.gw.test", "http://127.0.0.1:18080/"], capture_output=True, text=True)
    ms = (time.perf_counter() - t) * 1000
    open(f"{out}/held.txt", "w").write(f"{len(conns)} {held} {probe.stdout} {ms:.1f}\n")
    for _, w in conns: w.close()
asyncio.run(main())
PY
read -r held_n held_kb code ms < "$OUT/held.txt"
per=$(( (held_kb - before) * 1024 / held_n ))
printf 'idle connections: %s (mode %s)\nRSS before: %s KiB, with them open: %s KiB\nper idle connection: %s bytes\nfresh request while they are open: HTTP %s in %s ms\n' \
  "$held_n" "${MODE:-mixed}" "$before" "$held_kb" "$per" "$code" "$ms" | tee "$OUT/summary.txt"
