#!/usr/bin/env bash
# The gateway as the benchmark harness's `custom` candidate (BENCH_SH; the method is in
# docs/performance.md), with every tenant feature switched on: SNI certificate, tenant by
# SNI/Host, a JWT checked on every request that carries one, a rate limit (never hit), signing.
#
#   loadtest/bench-gateway.sh                   write the config, then exec the gateway on it
#   loadtest/bench-gateway.sh --token [T ...]   print a valid JWT for each tenant T (default acme)
#   loadtest/bench-gateway.sh --write-config    write the config, print its path (nothing runs)
#
# Listeners 127.0.0.1:18080 (plain) and 127.0.0.1:18443 (TLS, h2 + http/1.1), upstream pool
# http://127.0.0.1:19000, access log off, RUST_LOG=warn unless set.
# Tenants: acme, globex, initech (acme.gw.test, ...) plus $TENANTS filler tenants (default 10),
# t00000 .. t<N-1>, reachable as t00042.gw.test and by a custom domain t00042.example.test.
# Env: GW_CERT, GW_KEY     certificate for *.gw.test (the harness sets them; when unset, a
#                          self-signed P-256 one is made in the work dir)
#      GATEWAY_BIN         the binary (default: <repo>/target/release/tenant-gateway)
#      GW_WORKDIR          where the config and secrets go (default: $TMPDIR/tgw-bench-gateway,
#                          rewritten on every start)
# The JWT secret is a fixed, public, benchmark-only value: never reuse it anywhere else.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${GATEWAY_BIN:-$repo/target/release/tenant-gateway}
TENANTS=${TENANTS:-10}
WORK=${GW_WORKDIR:-${TMPDIR:-/tmp}/tgw-bench-gateway}
JWT_SECRET=${BENCH_JWT_SECRET:-tenant-gateway-bench-hs256-dev-secret-0001}
JWT_KID=bench-hs
JWT_ISS=https://auth.bench.gw.test/
JWT_AUD=tenant-gateway-bench

token() { # tenant... -> one HS256 JWT per line (exp 2100-01-01)
  python3 - "$JWT_SECRET" "$JWT_KID" "$JWT_ISS" "$JWT_AUD" "$@" <<'PY'
import base64, hashlib, hmac, json, sys
secret, kid, iss, aud, *tenants = sys.argv[1:]
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
enc = lambda o: b64(json.dumps(o, separators=(",", ":")).encode())
for t in tenants:
    head = enc({"alg": "HS256", "typ": "JWT", "kid": kid})
    body = enc({"iss": iss, "aud": aud, "sub": "bench-user", "tenant": t, "iat": 1767225600, "exp": 4102444800})
    sig = b64(hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest())
    print(f"{head}.{body}.{sig}")
PY
}

write_config() {
  mkdir -p "$WORK"
  printf %s "$JWT_SECRET" > "$WORK/jwt.secret"
  [ -s "$WORK/signing.key" ] || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$WORK/signing.key"
  local cert=${GW_CERT:-} key=${GW_KEY:-}
  if [ -z "$cert" ] || [ -z "$key" ]; then
    cert=$WORK/gw.crt key=$WORK/gw.key
    if [ ! -s "$cert" ]; then
      openssl ecparam -name prime256v1 -genkey -noout -out "$key"
      openssl req -x509 -new -key "$key" -out "$cert" -days 3650 -subj "/CN=gw.test" \
        -addext "subjectAltName=DNS:*.gw.test,DNS:acme.gw.test,DNS:globex.gw.test,DNS:initech.gw.test" 2>/dev/null
    fi
  fi
  {
    cat <<YAML
# written by loadtest/bench-gateway.sh: acme, globex, initech + $TENANTS filler tenants
version: 1
listeners:
  - { name: http,  bind: "127.0.0.1:18080" }
  - { name: https, bind: "127.0.0.1:18443", tls: true }
tls:
  default_certificate: { cert: "$cert", key: "$key" }
tenancy: { base_domains: [gw.test], sources: [sni, host, token] }
token:
  tenant_claim: tenant
  issuer: "$JWT_ISS"
  audience: $JWT_AUD
  algorithms: [HS256]
  keys: [ { kid: $JWT_KID, secret_file: "$WORK/jwt.secret" } ]
signing: { header_prefix: x-tenant, active_key: k1, keys: [ { id: k1, secret_file: "$WORK/signing.key" } ] }
plans:
  bench: { rate: { per_second: 1000000, burst: 1000000 }, timeouts: { connect_ms: 1000, request_ms: 10000 } }
upstreams: { pool: { endpoints: ["http://127.0.0.1:19000"] } }
routes: [ { path_prefix: /, upstream: pool } ]
access_log: false
tenants:
  acme: { plan: bench }
  globex: { plan: bench }
  initech: { plan: bench }
YAML
    awk -v n="$TENANTS" 'BEGIN { for (i = 0; i < n; i++) printf "  t%05d: { plan: bench, hosts: [t%05d.example.test] }\n", i, i }'
  } > "$WORK/gateway.yaml.tmp"
  mv "$WORK/gateway.yaml.tmp" "$WORK/gateway.yaml"
}

case ${1:-} in
  --token) shift; [ $# -gt 0 ] || set -- acme; token "$@" ;;
  --write-config) write_config; echo "$WORK/gateway.yaml" ;;
  "") write_config; RUST_LOG=${RUST_LOG:-warn} exec "$BIN" run --config "$WORK/gateway.yaml" ;;
  *) sed -n '2,19p' "$0" >&2; exit 2 ;;
esac
