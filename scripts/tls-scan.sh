#!/usr/bin/env bash
# TLS configuration scan of the gateway's TLS listener, on loopback only.
#
# Builds the release binary (cargo decides whether anything changed), writes throwaway dev
# certificates and a minimal config with one TLS listener on 127.0.0.1:<free port> into a temp
# directory, starts the gateway, scans it with SNI set to a configured tenant host, prints what
# is offered (protocols, suites, groups, ALPN) and a verdict, and stops the gateway on exit.
#
# Scanners:
#   sslscan  always (installed with apt-get when absent).
#   probe    a few raw ClientHellos from python3 (stdlib only): compression, weak-only suites,
#            ALPN, the TLS 1.3 hybrid group X25519MLKEM768. Independent of any OpenSSL build
#            (Debian's sslscan cannot test compression; OpenSSL 3.0 does not know ML-KEM).
#   sslyze   optional second opinion, installed from PyPI into target/tls-scan-venv on first use;
#            skipped with a note when it cannot be installed. TLS_SCAN_SSLYZE=0 skips it.
#
# FAIL if: SSLv2/SSLv3/TLSv1.0/TLSv1.1 enabled; a weak suite accepted (NULL, EXPORT, anon, RC4,
# DES/3DES, MD5, CBC with SHA-1, < 128-bit, or anything from the weak-only probe); a group under
# 128-bit strength; client-initiated renegotiation (secure or insecure); compression; Heartbleed.
# WARN (no FAIL): other CBC suites, suites without forward secrecy, informational oddities.
#
# Usage: scripts/tls-scan.sh            exit 0 = PASS, 1 = FAIL, 2 = the scan could not run
# Env:   GATEWAY_BIN=path   use this binary instead of building target/release/tenant-gateway
#        TLS_SCAN_SSLYZE=0  skip sslyze;  TLS_SCAN_KEEP=1  keep the temp dir (logs, raw output)
set -euo pipefail
cd "$(dirname "$0")/.."

DOMAIN=gw.localhost
TENANT=acme
SNI="$TENANT.$DOMAIN"

say() { printf '%s\n' "$*"; }
die() {
  say "tls-scan: ERROR: $*" >&2
  exit 2
}

# --- tools --------------------------------------------------------------------------------
if ! command -v sslscan >/dev/null 2>&1; then
  say "installing sslscan"
  [ "$(id -u)" = 0 ] || die "sslscan is not installed (apt-get install sslscan)"
  export DEBIAN_FRONTEND=noninteractive
  { timeout 300 apt-get update -qq && timeout 300 apt-get install -y -qq sslscan >/dev/null; } ||
    die "cannot install sslscan"
fi
HAVE_PY=0
command -v python3 >/dev/null 2>&1 && HAVE_PY=1

# --- binary -------------------------------------------------------------------------------
if [ -n "${GATEWAY_BIN:-}" ]; then
  BIN="$GATEWAY_BIN"
else
  cargo build --release --locked --bin tenant-gateway
  BIN=target/release/tenant-gateway
fi
[ -x "$BIN" ] || die "no gateway binary at $BIN"

# --- temp dir, cleanup --------------------------------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/tls-scan.XXXXXX")"
GW_PID=""
cleanup() {
  if [ -n "$GW_PID" ] && kill -0 "$GW_PID" 2>/dev/null; then
    kill -TERM "$GW_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$GW_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$GW_PID" 2>/dev/null || true
    wait "$GW_PID" 2>/dev/null || true
  fi
  if [ "${TLS_SCAN_KEEP:-0}" = 1 ]; then
    say "tls-scan: kept $WORK"
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- certificates and config --------------------------------------------------------------
"$BIN" dev-certs --out "$WORK/certs" --domain "$DOMAIN" --tenant "$TENANT" >/dev/null
C="$WORK/certs"
cat >"$WORK/gateway.yaml" <<EOF
# written by scripts/tls-scan.sh; one TLS listener, port chosen by the OS
version: 1
listeners:
  - { name: https, bind: "127.0.0.1:0", tls: true }
tls:
  default_certificate: { cert: "$C/default.crt", key: "$C/default.key" }
tenancy:
  base_domains: [$DOMAIN]
  sources: [sni, host]
signing:
  header_prefix: x-tenant
  active_key: k1
  keys:
    - { id: k1, secret_file: "$C/signing.key" }
plans:
  free: { rate: { per_second: 20, burst: 40 }, max_concurrent: 20, timeouts: { connect_ms: 1000, request_ms: 10000 }, max_body_bytes: 1048576 }
upstreams:
  shared: { endpoints: ["http://127.0.0.1:9"] }
routes:
  - { path_prefix: /, upstream: shared }
tenants:
  $TENANT:
    plan: free
    hosts: [$SNI]
    tls: { cert: "$C/$TENANT.crt", key: "$C/$TENANT.key" }
EOF

# --- start the gateway --------------------------------------------------------------------
RUST_LOG=info "$BIN" --log-format json --workers 1 run --config "$WORK/gateway.yaml" \
  >"$WORK/gateway.out" 2>"$WORK/gateway.log" &
GW_PID=$!
ADDR=""
for _ in $(seq 200); do # up to 20 s
  ADDR="$(grep '"listener":"https"' "$WORK/gateway.log" 2>/dev/null |
    sed -n 's/.*"addr":"\([^"]*\)".*/\1/p' | head -n1 || true)"
  [ -n "$ADDR" ] && break
  kill -0 "$GW_PID" 2>/dev/null || { cat "$WORK/gateway.log" >&2; die "the gateway exited"; }
  sleep 0.1
done
[ -n "$ADDR" ] || { cat "$WORK/gateway.log" >&2; die "the gateway did not start listening in 20 s"; }
case "$ADDR" in 127.0.0.1:*) ;; *) die "refusing to scan non-loopback address $ADDR" ;; esac
PORT="${ADDR##*:}"
say "tls-scan: gateway pid $GW_PID on $ADDR, SNI $SNI ($("$BIN" --version))"

FAILS=()
WARNS=()
fail() { FAILS+=("$*"); }
warn() { WARNS+=("$*"); }

# --- sslscan ------------------------------------------------------------------------------
say ""
say "== sslscan ($(sslscan --version 2>&1 | sed 's/\x1b\[[0-9;]*m//g' | grep -Eo '[0-9]+\.[0-9]+\.[0-9]+' | head -n1))"
rc=0
timeout 180 sslscan --no-colour --sni-name="$SNI" "127.0.0.1:$PORT" >"$WORK/sslscan.txt" 2>&1 || rc=$?
S="$WORK/sslscan.txt"
[ "$rc" = 0 ] || { cat "$S" >&2; die "sslscan exited with $rc"; }

say "protocols:"
grep -E '^(SSLv[23]|TLSv1\.[0-3]) +(enabled|disabled)' "$S" | sed 's/^/  /'
for p in SSLv2 SSLv3 TLSv1.0 TLSv1.1; do
  if grep -Eq "^$p +enabled" "$S"; then fail "sslscan: $p enabled"; fi
done
grep -Eq '^TLSv1\.[23] +enabled' "$S" || die "sslscan saw neither TLSv1.2 nor TLSv1.3: scan broken?"

say "suites (accepted by the server):"
grep -E '^(Preferred|Accepted) ' "$S" | sed 's/^/  /'
while read -r _ proto bits _ name _; do
  case "$name" in
    *NULL* | *EXP* | *RC4* | *DES* | *ADH* | *AECDH* | *anon* | *MD5*)
      fail "sslscan: weak suite $proto $name ($bits bits)"
      continue
      ;;
  esac
  if [ "$bits" -lt 128 ]; then
    fail "sslscan: $proto $name has $bits-bit strength"
    continue
  fi
  if [ "$proto" != TLSv1.3 ]; then
    case "$name" in
      *GCM* | *CHACHA20* | *CCM*) ;;
      *-SHA) fail "sslscan: CBC suite with SHA-1 $proto $name" ;;
      *) warn "sslscan: CBC suite $proto $name" ;;
    esac
    case "$name" in
      ECDHE-* | DHE-* | EDH-*) ;;
      *) warn "sslscan: no forward secrecy $proto $name" ;;
    esac
  fi
done < <(grep -E '^(Preferred|Accepted) ' "$S")

say "key exchange groups:"
awk '/Server Key Exchange Group/{g=1;next} g&&/^ *$/{g=0} g' "$S" | sed 's/^/  /'
while read -r proto bits _ name; do
  if [ "$bits" -lt 128 ]; then fail "sslscan: group $name ($proto) has $bits-bit strength"; fi
done < <(awk '/Server Key Exchange Group/{g=1;next} g&&/^ *$/{g=0} g' "$S" | grep -E '^TLSv' || true)

say "renegotiation / compression / heartbleed / fallback:"
grep -Ei 'renegotiation (not )?supported|compression|heartbleed|Fallback SCSV' "$S" |
  grep -v '^ ' | sed 's/^/  /'
if grep -Eq '^(Secure|Insecure) session renegotiation supported' "$S"; then
  fail "sslscan: client-initiated renegotiation: $(grep -E '^(Secure|Insecure) session renegotiation' "$S")"
elif ! grep -Eq '^Session renegotiation not supported' "$S"; then
  warn "sslscan: renegotiation result not recognised"
fi
if grep -Eq '^Compression enabled' "$S"; then
  fail "sslscan: TLS compression enabled"
elif ! grep -Eq '^Compression disabled' "$S"; then
  warn "sslscan: compression not tested (this sslscan's OpenSSL has no zlib); see probe/sslyze"
fi
if grep -Ei 'vulnerable to heartbleed' "$S" | grep -viq 'not vulnerable'; then
  fail "sslscan: Heartbleed"
fi
if ! grep -Eq '^Subject: +'"$TENANT"'$' "$S"; then
  warn "sslscan: the $TENANT certificate was not served for SNI $SNI"
fi

# --- raw probes ---------------------------------------------------------------------------
say ""
say "== probe (raw ClientHellos from python3)"
if [ "$HAVE_PY" = 1 ]; then
  rc=0
  timeout 60 python3 - "$PORT" "$SNI" >"$WORK/probe.txt" 2>&1 <<'PY' || rc=$?
import os, socket, struct, sys

port, sni = int(sys.argv[1]), sys.argv[2].encode()
STRONG = {0xC02B, 0xC02C, 0xC02F, 0xC030, 0xCCA8, 0xCCA9}  # ECDHE + AEAD, as TLS 1.2 should be
# Sound but not offered by the control hello: DHE + AEAD, ECDHE/DHE + CCM (16-byte tag).
OTHER_OK = {0x009E, 0x009F, 0xCCAA, 0xC09E, 0xC09F, 0xC0AC, 0xC0AD}
# Everything else in the TLS 1.0-1.2 code point ranges that hold real suites: NULL, EXPORT,
# anon, RC4, DES/3DES, CBC, static RSA/DH, PSK, CCM_8, ... (the reneg SCSV 0x00FF left out).
WEAK = [s for r in (range(0x0000, 0x0100), range(0xC000, 0xC100), range(0xCC00, 0xCD00))
        for s in r if s not in STRONG and s not in OTHER_OK and s != 0x00FF]

def vec(n, b):
    return len(b).to_bytes(n, "big") + b

def ext(t, b):
    return struct.pack("!H", t) + vec(2, b)

def hello(suites, comp):
    exts = b"".join([
        ext(0, vec(2, b"\x00" + vec(2, sni))),                                    # SNI
        ext(10, vec(2, struct.pack("!3H", 0x001D, 0x0017, 0x0018))),              # groups
        ext(11, vec(1, b"\x00")),                                                 # point formats
        ext(13, vec(2, struct.pack("!8H", 0x0403, 0x0503, 0x0804, 0x0805, 0x0806,
                                   0x0401, 0x0501, 0x0601))),                     # sig algs
        ext(16, vec(2, vec(1, b"h2") + vec(1, b"http/1.1"))),                     # ALPN
        ext(0x0017, b""),                                                         # EMS
        ext(0xFF01, b"\x00"),                                                     # reneg info
    ])
    body = (b"\x03\x03" + os.urandom(32) + vec(1, b"")
            + vec(2, b"".join(struct.pack("!H", s) for s in suites))
            + vec(1, bytes(comp)) + vec(2, exts))
    return b"\x16\x03\x01" + vec(2, b"\x01" + vec(3, body))

def exchange(suites, comp):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(hello(suites, comp))
        buf = b""
        try:
            while len(buf) < 5 or len(buf) < 5 + int.from_bytes(buf[3:5], "big"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        except (ConnectionResetError, socket.timeout):
            pass
    if len(buf) < 5:
        return ("closed", None)
    rec = buf[5:5 + int.from_bytes(buf[3:5], "big")]
    if buf[0] == 0x15:
        return ("alert", rec[1] if len(rec) > 1 else None)
    if buf[0] != 0x16 or not rec or rec[0] != 2:
        return ("other", buf[0])
    p = 4 + 2 + 32
    p += 1 + rec[p]
    out = {"suite": int.from_bytes(rec[p:p + 2], "big"), "comp": rec[p + 2], "alpn": None}
    p += 3
    if p + 2 <= len(rec):
        end = p + 2 + int.from_bytes(rec[p:p + 2], "big")
        p += 2
        while p + 4 <= end:
            t, n = struct.unpack("!HH", rec[p:p + 4])
            if t == 16:
                out["alpn"] = rec[p + 7:p + 4 + n].decode()
            p += 4 + n
    return ("hello", out)

kind, info = exchange(sorted(STRONG), [0])
if kind != "hello":
    print(f"PROBE control-failed {kind} {info}")
    sys.exit(0)
print(f"PROBE control ok suite=0x{info['suite']:04x} alpn={info['alpn']}")
kind, info = exchange(sorted(STRONG), [1, 0])  # DEFLATE offered first
print(f"PROBE compression {kind} method={info['comp'] if kind == 'hello' else '-'}")
def hello13(group):
    exts = b"".join([
        ext(0, vec(2, b"\x00" + vec(2, sni))),
        ext(10, vec(2, struct.pack("!H", group))),
        ext(13, vec(2, struct.pack("!4H", 0x0403, 0x0503, 0x0804, 0x0805))),
        ext(43, vec(1, b"\x03\x04")),                                           # TLS 1.3 only
        ext(51, vec(2, b"")),                                                     # no key share
    ])
    body = (b"\x03\x03" + os.urandom(32) + vec(1, os.urandom(32))
            + vec(2, struct.pack("!H", 0x1301)) + vec(1, b"\x00") + vec(2, exts))
    return b"\x16\x03\x01" + vec(2, b"\x01" + vec(3, body))

# TLS 1.3 hybrid post-quantum group X25519MLKEM768 (0x11ec), invisible to OpenSSL 3.0 scanners:
# offered alone with no key share, a server that supports it answers with a HelloRetryRequest.
HRR = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")

def tls13_group(group):
    first = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(hello13(group))
        try:
            while len(first) < 43:
                chunk = s.recv(43 - len(first))
                if not chunk:
                    break
                first += chunk
        except (ConnectionResetError, socket.timeout):
            pass
    return len(first) == 43 and first[0] == 0x16 and first[5] == 2 and first[11:43] == HRR

print("PROBE tls13-group X25519MLKEM768 "
      + ("supported" if tls13_group(0x11EC) else "not-supported"))
kind, info = exchange(WEAK, [0])
if kind == "hello":
    print(f"PROBE weak accepted suite=0x{info['suite']:04x} of {len(WEAK)} offered")
else:
    print(f"PROBE weak rejected {kind}={info} ({len(WEAK)} weak suites offered)")
PY
  sed 's/^/  /' "$WORK/probe.txt"
  [ "$rc" = 0 ] || warn "probe: python exited with $rc"
  P="$WORK/probe.txt"
  if grep -q '^PROBE control ok' "$P"; then
    if ! grep -q '^PROBE compression hello method=0$' "$P"; then
      fail "probe: compression: $(grep '^PROBE compression' "$P")"
    fi
    if grep -q '^PROBE weak accepted' "$P"; then fail "probe: $(grep '^PROBE weak' "$P")"; fi
    if ! grep -q '^PROBE control ok .*alpn=h2$' "$P"; then warn "probe: ALPN h2 not chosen first"; fi
  else
    warn "probe: the control hello (ECDHE + AEAD) was not accepted, probe results unusable"
  fi
else
  warn "probe: python3 absent, compression tested only by the scanners"
  say "  skipped (no python3)"
fi

# --- sslyze (optional) --------------------------------------------------------------------
say ""
say "== sslyze"
SSLYZE_PY=""
if [ "${TLS_SCAN_SSLYZE:-1}" != 0 ] && [ "$HAVE_PY" = 1 ]; then
  VENV=target/tls-scan-venv
  if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sslyze' 2>/dev/null; then
    SSLYZE_PY="$VENV/bin/python"
  elif { python3 -m venv "$VENV" && timeout 300 "$VENV/bin/pip" install -q 'sslyze>=6,<7'; } \
    >"$WORK/pip.log" 2>&1; then
    SSLYZE_PY="$VENV/bin/python"
  else
    warn "sslyze: could not be installed from PyPI (see pip output with TLS_SCAN_KEEP=1)"
  fi
fi
if [ -n "$SSLYZE_PY" ]; then
  timeout 300 "$SSLYZE_PY" -m sslyze --quiet --mozilla_config disable --sni "$SNI" \
    --sslv2 --sslv3 --tlsv1 --tlsv1_1 --tlsv1_2 --tlsv1_3 --elliptic_curves --compression \
    --reneg --heartbleed --openssl_ccs --robot --fallback --ems \
    --json_out "$WORK/sslyze.json" "127.0.0.1:$PORT" >"$WORK/sslyze.txt" 2>&1 || true
  if [ -s "$WORK/sslyze.json" ]; then
    "$SSLYZE_PY" - "$WORK/sslyze.json" >"$WORK/sslyze-summary.txt" <<'PY' || true
import json, sys

res = json.load(open(sys.argv[1]))["server_scan_results"][0]
if res.get("scan_status") != "COMPLETED":
    print(f"WARN scan status {res.get('scan_status')}: {res.get('connectivity_error_trace')}")
    sys.exit(0)
r = res["scan_result"]

def get(name):
    v = r.get(name) or {}
    return v.get("result") if v.get("status") == "COMPLETED" else None

WEAK = ("NULL", "EXPORT", "anon", "RC4", "DES", "MD5")
for key, label in [("ssl_2_0_cipher_suites", "SSLv2"), ("ssl_3_0_cipher_suites", "SSLv3"),
                   ("tls_1_0_cipher_suites", "TLSv1.0"), ("tls_1_1_cipher_suites", "TLSv1.1"),
                   ("tls_1_2_cipher_suites", "TLSv1.2"), ("tls_1_3_cipher_suites", "TLSv1.3")]:
    x = get(key)
    if x is None:
        print(f"WARN {label}: not scanned")
        continue
    acc = x["accepted_cipher_suites"]
    print(f"INFO {label}: {'enabled' if acc else 'disabled'}"
          f" ({len(acc)} of {len(acc) + len(x['rejected_cipher_suites'])} suites accepted)")
    if acc and label not in ("TLSv1.2", "TLSv1.3"):
        print(f"FAIL {label} enabled")
    for a in acc:
        cs = a["cipher_suite"]
        n, bits = cs["name"], cs["key_size"]
        print(f"INFO   {label} {bits:3d} bits {n}")
        if any(w in n for w in WEAK) or cs.get("is_anonymous") or bits < 128:
            print(f"FAIL weak suite {label} {n}")
        elif "_CBC_" in n and n.endswith("_SHA"):
            print(f"FAIL CBC suite with SHA-1 {label} {n}")
        elif "_CBC_" in n:
            print(f"WARN CBC suite {label} {n}")
x = get("elliptic_curves")
if x is not None:
    print("INFO groups: " + ", ".join(c["name"] for c in x["supported_curves"]))
x = get("tls_compression")
if x is not None:
    print(f"INFO compression: {'SUPPORTED' if x['supports_compression'] else 'disabled'}")
    if x["supports_compression"]:
        print("FAIL TLS compression supported")
x = get("session_renegotiation")
if x is not None:
    n = x.get("client_renegotiations_success_count", 0)
    print(f"INFO renegotiation: client-initiated accepted {n} time(s); RFC 5746 extension:"
          f" {'yes' if x['supports_secure_renegotiation'] else 'no'}")
    if n or x["is_vulnerable_to_client_renegotiation_dos"]:
        print("FAIL client-initiated renegotiation accepted")
for key, field, label in [("heartbleed", "is_vulnerable_to_heartbleed", "Heartbleed"),
                          ("openssl_ccs_injection", "is_vulnerable_to_ccs_injection", "CCS injection")]:
    x = get(key)
    if x is not None and x[field]:
        print(f"FAIL {label}")
x = get("robot")
if x is not None:
    print(f"INFO ROBOT: {x['robot_result']}")
    if x["robot_result"].startswith("VULNERABLE"):
        print("FAIL ROBOT")
x = get("tls_fallback_scsv")
if x is not None:
    print(f"INFO TLS_FALLBACK_SCSV: {'supported' if x['supports_fallback_scsv'] else 'not supported'}")
x = get("tls_extended_master_secret")
if x is not None:
    print(f"INFO extended master secret: {'supported' if x['supports_ems_extension'] else 'NOT supported'}")
PY
    sed -n 's/^INFO /  /p' "$WORK/sslyze-summary.txt"
    while IFS= read -r l; do fail "sslyze: $l"; done < <(sed -n 's/^FAIL //p' "$WORK/sslyze-summary.txt")
    while IFS= read -r l; do warn "sslyze: $l"; done < <(sed -n 's/^WARN //p' "$WORK/sslyze-summary.txt")
  else
    warn "sslyze: produced no JSON ($(tail -n1 "$WORK/sslyze.txt" 2>/dev/null))"
  fi
else
  say "  skipped"
fi

# --- verdict ------------------------------------------------------------------------------
if ! kill -0 "$GW_PID" 2>/dev/null; then warn "the gateway died during the scan"; fi
say ""
for w in "${WARNS[@]}"; do say "WARN: $w"; done
for f in "${FAILS[@]}"; do say "FAIL: $f"; done
if ((${#FAILS[@]})); then
  say "tls-scan verdict: FAIL (${#FAILS[@]} finding(s))"
  exit 1
fi
say "tls-scan verdict: PASS (${#WARNS[@]} warning(s))"
