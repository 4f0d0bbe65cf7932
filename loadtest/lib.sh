# Shared pieces of the loadtest scripts (sourced): an nginx upstream, a gateway, cleanup.
# Everything listens on 127.0.0.1 only and is stopped on exit.
set -euo pipefail
BIN=${BIN:-target/release/tenant-gateway}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

# A process still listening on a port these scripts use would be measured instead of theirs.
for port in 18080 18443 19000; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "127.0.0.1:$port is already in use (ss -ltnp | grep $port): stop that process first" >&2
    exit 1
  fi
done

# start_upstream PORT: nginx, one worker, `return 200` with a 100-byte body, pinned to CPU 0.
start_upstream() {
  local body
  body=$(printf 'x%.0s' $(seq 1 100))
  cat > "$work/nginx.conf" <<NGX
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$1; location / { return 200 "$body"; } }
}
NGX
  taskset -c 0 nginx -c "$work/nginx.conf" -p "$work" & pids+=($!)
}

# start_gateway CONFIG HOST: the gateway pinned to CPU 1; waits until HOST answers on :18080.
# The config may name $work/signing.key as its signing secret file.
start_gateway() {
  head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$work/signing.key"
  RUST_LOG=${RUST_LOG:-info} taskset -c 1 "$BIN" run --config "$1" 2>> "$work/gateway.log" & pids+=($!)
  for _ in $(seq 50); do curl -sf -o /dev/null -H "Host: $2" http://127.0.0.1:18080/ && return 0; sleep 0.1; done
  echo "gateway did not come up" >&2; return 1
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
