"""End to end: the real tenant-gateway binary in front of a real uvicorn + Starlette app.

The binary is target/debug/tenant-gateway or target/release/tenant-gateway at the repository root
(middleware/test.sh builds it first); without one these tests are skipped. Mode "v1" uses the
gateway's HMAC v1 signatures; mode "v2" its Ed25519 v2 signatures for pool "shared", verified with
the keys fetched from the gateway's admin JWKS, audience checked.
"""

import asyncio
import base64
import hashlib
import hmac
import http.client
import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tenant_gateway_context import EnvelopeError, SignedFields, current_tenant, run_in_tenant
from tenant_gateway_context.signature import sign

from apps import SERVICE_KEY, make_app, split_app

ROOT = Path(__file__).resolve().parents[3]
SECRET = b"e2e-signing-secret-0123456789abcdef"
JWT_SECRET = b"e2e-jwt-secret-0123456789abcdef0123"
ED = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"e2e k2").digest())
DOMAIN = "gw.test"


def gateway_binary():
    for kind in ("debug", "release"):
        p = ROOT / "target" / kind / "tenant-gateway"
        if p.exists():
            return p
    return None


BINARY = gateway_binary()
pytestmark = pytest.mark.skipif(
    BINARY is None, reason="no gateway binary at target/{debug,release}/tenant-gateway: run `cargo build` first")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port, method, path, headers=(), body=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    data = json.dumps(body).encode() if body is not None else None
    for k, v in (headers.items() if isinstance(headers, dict) else headers):
        conn.putheader(k, v)
    if data is not None:
        conn.putheader("content-type", "application/json")
        conn.putheader("content-length", str(len(data)))
    conn.endheaders(data)
    r = conn.getresponse()
    raw = r.read()
    conn.close()
    try:
        payload = json.loads(raw)
    except ValueError:
        payload = raw.decode("latin-1")
    return r.status, r.getheader("content-type"), payload


def jwt(claims):
    enc = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()  # noqa: E731
    head = enc(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "dev-hs"}).encode())
    body = enc(json.dumps(claims).encode())
    sig = enc(hmac.new(JWT_SECRET, f"{head}.{body}".encode(), hashlib.sha256).digest())
    return f"{head}.{body}.{sig}"


def bearer(tenant, sub):
    return "Bearer " + jwt({"iss": "https://auth.test/", "aud": "gateway", "exp": int(time.time()) + 600,
                            "tenant_id": tenant, "sub": sub})


def gateway_config(d, mode, gw, admin, app):
    keys = f"    - {{ id: k1, secret_file: {d}/signing.key }}\n"
    signing = "signing:\n  active_key: k1\n  keys:\n" + keys
    pool_key = ""
    if mode == "v2":
        signing = ("signing:\n  version: 2\n  active_key: k1\n  keys:\n" + keys
                   + f"    - {{ id: k2, algorithm: ed25519, private_key_file: {d}/k2.pem }}\n")
        pool_key = ", signing_key: k2"
    return f"""version: 1
listeners:
  - {{ name: http, bind: "127.0.0.1:{gw}" }}
admin: {{ bind: "127.0.0.1:{admin}" }}
tenancy:
  base_domains: [{DOMAIN}]
  sources: [host, token]
token:
  tenant_claim: tenant_id
  issuer: https://auth.test/
  audience: gateway
  algorithms: [HS256]
  keys:
    - {{ kid: dev-hs, secret_file: {d}/jwt.key }}
{signing}plans:
  free: {{ timeouts: {{ connect_ms: 1000, request_ms: 5000 }} }}
  enterprise: {{ timeouts: {{ connect_ms: 1000, request_ms: 5000 }} }}
upstreams:
  shared: {{ endpoints: ["http://127.0.0.1:{app}"]{pool_key} }}
routes:
  - {{ path_prefix: /, upstream: shared }}
tenants:
  acme: {{ plan: enterprise }}
  globex: {{ plan: free }}
"""


class Server(threading.Thread):
    """uvicorn serving an ASGI app on an already-bound loopback socket."""

    def __init__(self, app):
        super().__init__(daemon=True)
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))

    def run(self):
        self.server.run(sockets=[self.sock])

    def __enter__(self):
        self.start()
        deadline = time.time() + 10
        while not self.server.started:
            assert time.time() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.join(5)


@pytest.fixture(scope="module", params=["v1", "v2"])
def stack(request, tmp_path_factory):
    mode = request.param
    d = tmp_path_factory.mktemp(f"gw-{mode}")
    (d / "signing.key").write_bytes(SECRET)
    (d / "jwt.key").write_bytes(JWT_SECRET)
    (d / "k2.pem").write_bytes(ED.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
    gw, admin = free_port(), free_port()
    if mode == "v2":
        kw = dict(hmac_keys={"k1": SECRET}, jwks=f"http://127.0.0.1:{admin}/.well-known/tenant-signing-keys")
        default, strict = make_app(audience="shared", **kw), make_app(audience="acme-dedicated", **kw)
    else:
        default = make_app(hmac_keys={"k1": SECRET})
        strict = make_app(hmac_keys={"k1": SECRET}, audience="shared")
    with Server(split_app(default, strict)) as srv:
        cfg = d / "gateway.yaml"
        cfg.write_text(gateway_config(d, mode, gw, admin, srv.port))
        log = open(d / "gateway.log", "wb")
        proc = subprocess.Popen([str(BINARY), "run", "--config", str(cfg)], stdout=log, stderr=log,
                                env=dict(os.environ, RUST_LOG="warn"))
        try:
            deadline = time.time() + 30
            while True:
                try:
                    if request_ok(admin):
                        break
                except OSError:
                    pass
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail("gateway did not become ready:\n" + (d / "gateway.log").read_text())
                time.sleep(0.05)
            yield {"mode": mode, "gw": gw, "admin": admin, "app": srv.port, "default": default}
        finally:
            proc.terminate()
            proc.wait(10)
            log.close()


def request_ok(admin):
    return request(admin, "GET", "/readyz", {"host": "127.0.0.1"})[0] == 200


def via_gateway(stack, path, tenant="acme", method="GET", body=None, headers=None):
    h = {"host": f"{tenant}.{DOMAIN}:{stack['gw']}", **(headers or {})}
    return request(stack["gw"], method, path, h, body)


def refused(resp):
    return resp == (401, "application/json", {"error": "invalid_tenant_signature"})


def test_tenant_reaches_the_handler(stack):
    s, _, j = via_gateway(stack, "/whoami")
    assert s == 200, j
    assert (j["tenant"], j["plan"], j["subject"], j["source"]) == ("acme", "enterprise", None, "host")
    sig = j["received"]["x-tenant-signature"]
    assert j["request_id"] and sig.startswith(stack["mode"] + ";")
    if stack["mode"] == "v2":  # the pool's key k2: Ed25519, verified through the JWKS
        assert sig.startswith("v2;kid=k2;alg=ed25519;") and ";aud=shared;" in sig, sig
    s, _, j = via_gateway(stack, "/api/orders?limit=10&cursor=a%2Fb", tenant="globex",
                          headers={"authorization": bearer("globex", "user-7")})
    assert s == 200, j
    assert (j["tenant"], j["plan"], j["subject"], j["source"]) == ("globex", "free", "user-7", "host,token")


def test_non_ascii_subject(stack):
    # The gateway sends and signs `sub` percent-encoded; the middleware verifies it and decodes it.
    s, _, j = via_gateway(stack, "/whoami", headers={"authorization": bearer("acme", "zoë")})
    assert s == 200, j
    assert j["subject"] == "zoë" and j["received"]["x-tenant-subject"] == "zo%C3%AB"


def test_forged_stale_replayed_missing_are_refused_at_the_app(stack):
    s, _, j = via_gateway(stack, "/whoami")
    assert s == 200
    got = j["received"]
    direct = lambda h: request(stack["app"], "GET", "/whoami", h)  # noqa: E731
    assert refused(direct(got)), "replayed: the gateway's signature was already accepted"
    assert refused(direct({**got, "x-tenant-id": "globex"})), "forged tenant"
    sig = got["x-tenant-signature"]
    assert refused(direct({**got, "x-tenant-signature": sig[:-3] + ("AAA" if sig[-3:] != "AAA" else "BBB")}))
    assert refused(direct({k: v for k, v in got.items() if k != "x-tenant-signature"})), "missing"
    assert refused(direct({"host": got["host"]})), "nothing at all"

    # Stale (and, as a control, fresh) signatures minted with the gateway's own key.
    def minted(ts, rid):
        f = SignedFields(rid, "GET", got["host"], "/whoami", "acme", "enterprise", "", got["x-tenant-source"])
        if stack["mode"] == "v2":
            h = sign("v2", "k2", ED, ts, f, alg="ed25519", audience="shared")
        else:
            h = sign("v1", "k1", SECRET, ts, f)
        return {**got, "x-request-id": rid, "x-tenant-signature": h}

    assert refused(direct(minted(int(time.time()) - 1000, "stale-1"))), "stale"
    assert refused(direct(minted(int(time.time()) + 1000, "future-1"))), "from the future"
    assert direct(minted(int(time.time()), "fresh-1"))[0] == 200, "control: a fresh one passes"


def test_wrong_audience_is_refused(stack):
    if stack["mode"] == "v2":
        # the gateway signs for pool "shared"; /strict/ expects "acme-dedicated"
        s, _, j = via_gateway(stack, "/strict/whoami")
        assert refused((s, _, j)), j
        return
    # v1 names no audience: an app that expects one refuses it
    assert refused(via_gateway(stack, "/strict/whoami"))
    host = f"acme.{DOMAIN}:{stack['gw']}"

    def v2(aud, rid):
        f = SignedFields(rid, "GET", host, "/strict/whoami", "acme", "enterprise", "", "host")
        return {"host": host, "x-request-id": rid, "x-tenant-id": "acme", "x-tenant-plan": "enterprise",
                "x-tenant-source": "host",
                "x-tenant-signature": sign("v2", "k1", SECRET, int(time.time()), f, audience=aud)}

    assert refused(request(stack["app"], "GET", "/strict/whoami", v2("acme-dedicated", "aud-1")))
    assert request(stack["app"], "GET", "/strict/whoami", v2("shared", "aud-2"))[0] == 200


def test_jobs_carry_their_tenant_and_never_leak(stack):
    jobs = stack["default"].state.jobs
    while not jobs.empty():
        jobs.get_nowait()
    for i, tenant in enumerate(["acme", "globex", "acme", "globex"]):
        s, _, env = via_gateway(stack, "/jobs", tenant=tenant, method="POST", body={"n": i, "for": tenant})
        assert s == 200, env
    queued = [jobs.get_nowait() for _ in range(4)]

    # One worker thread, jobs of two tenants interleaved.
    seen, between = [], []

    def work(payload):
        t = current_tenant()
        time.sleep(0.01)
        return (t.tenant, t.plan, t.source, payload["for"], payload["n"])

    def worker():
        for env in json.loads(json.dumps(queued)):  # as if read back from a queue
            between.append(current_tenant())
            seen.append(run_in_tenant(env, work, service_key=SERVICE_KEY))
        between.append(current_tenant())

    th = threading.Thread(target=worker)
    th.start()
    th.join(10)
    plans = {"acme": "enterprise", "globex": "free"}
    assert seen == [(t, plans[t], "job", t, i) for i, t in enumerate(["acme", "globex", "acme", "globex"])]
    assert between == [None] * 5

    # One event loop, async jobs interleaving at every await.
    async def ajob(payload):
        out = []
        for _ in range(3):
            out.append(current_tenant().tenant)
            await asyncio.sleep(0.001)
        return payload["for"], out

    async def run_all():
        return await asyncio.gather(*(run_in_tenant(e, ajob, service_key=SERVICE_KEY) for e in queued))

    for expected, got in asyncio.run(run_all()):
        assert got == [expected] * 3

    # A tampered envelope is refused and runs nothing.
    ran = []
    for change in ({"tenant": "globex"}, {"payload": {"n": 0, "for": "globex"}}, {"plan": "free"}):
        with pytest.raises(EnvelopeError):
            run_in_tenant({**queued[0], **change}, ran.append, service_key=SERVICE_KEY)
    with pytest.raises(EnvelopeError):
        run_in_tenant(queued[0], ran.append, service_key=b"another service")
    assert ran == []
