"""The middleware in process (Starlette's TestClient), with locally minted signatures."""

import asyncio
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.testclient import TestClient

from tenant_gateway_context import (EnvelopeError, SignedFields, Verifier, current_tenant, job_envelope,
                                    run_in_tenant)
from tenant_gateway_context.middleware import TenantContext, _current
from tenant_gateway_context.signature import ReplayGuard, b64url, encode_subject, sign

from apps import SERVICE_KEY, make_app

SECRET = b"unit-test-secret"
ED = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
JWK = {"kty": "OKP", "crv": "Ed25519", "kid": "k2", "alg": "EdDSA", "use": "sig",
       "x": b64url(ED.public_key().public_bytes_raw())}
REFUSED = {"error": "invalid_tenant_signature"}


def headers(path="/whoami", *, method="GET", version="v1", kid="k1", alg="hmac-sha256", key=SECRET, aud="shared",
            ts=None, subject=None, tenant="acme", plan="enterprise", source="host", host="acme.gw.test",
            request_id=None):
    rid = request_id or f"req-{time.perf_counter_ns()}"
    f = SignedFields(rid, method, host, path, tenant, plan, encode_subject(subject) if subject else "", source)
    ts = int(time.time()) if ts is None else ts
    h = {"host": host, "x-request-id": rid, "x-tenant-id": tenant, "x-tenant-plan": plan, "x-tenant-source": source,
         "x-tenant-signature": sign(version, kid, key, ts, f, alg=alg, audience=aud)}
    if subject:
        h["x-tenant-subject"] = encode_subject(subject)
    return h


@pytest.fixture
def client():
    return TestClient(make_app(hmac_keys={"k1": SECRET}, jwks={"keys": [JWK]}))


def test_tenant_reaches_the_handler_with_decoded_subject(client):
    r = client.get("/whoami", headers=headers(subject="zoë", source="host,token"))
    assert r.status_code == 200, r.text
    j = r.json()
    assert (j["tenant"], j["plan"], j["subject"], j["source"]) == ("acme", "enterprise", "zoë", "host,token")
    assert j["received"]["x-tenant-subject"] == "zo%C3%AB"
    assert j["state_tenant"] == "acme"
    assert current_tenant() is None


def test_v2_ed25519_and_query_string(client):
    h = headers("/api/orders?limit=10&cursor=a%2Fb", version="v2", kid="k2", alg="ed25519", key=ED)
    r = client.get("/api/orders?limit=10&cursor=a%2Fb", headers=h)
    assert r.status_code == 200, r.text


def refused(r):
    return (r.status_code, r.headers["content-type"], r.json()) == (401, "application/json", REFUSED)


def test_missing_forged_stale_replayed_are_refused(client):
    assert refused(client.get("/whoami", headers={"host": "acme.gw.test"}))
    h = headers()
    forged = dict(h, **{"x-tenant-id": "globex"})
    assert refused(client.get("/whoami", headers=forged))
    assert client.get("/whoami", headers=h).status_code == 200
    assert refused(client.get("/whoami", headers=h)), "replay"
    assert refused(client.get("/whoami", headers=headers(ts=int(time.time()) - 301)))
    assert refused(client.get("/whoami", headers=headers(ts=int(time.time()) + 301)))
    assert refused(client.get("/whoami", headers=headers(key=b"guess")))
    assert refused(client.get("/whoami", headers=headers(kid="k9")))
    # an Ed25519 kid is never verifiable as HMAC (here keyed with its public key)
    assert refused(client.get("/whoami", headers=headers(version="v2", kid="k2", key=JWK["x"].encode())))
    dup = list(headers().items()) + [("x-tenant-signature", "v1;kid=k1;ts=1;sig=AA")]
    assert refused(client.get("/whoami", headers=dup))


def test_audience():
    c = TestClient(make_app(hmac_keys={"k1": SECRET}, jwks={"keys": [JWK]}, audience="shared"))
    assert c.get("/whoami", headers=headers(version="v2", kid="k2", alg="ed25519", key=ED)).status_code == 200
    assert refused(c.get("/whoami", headers=headers(version="v2", kid="k2", alg="ed25519", key=ED, aud="other")))
    assert refused(c.get("/whoami", headers=headers())), "v1 names no audience"
    assert c.get("/whoami", headers=headers(version="v2", aud="shared")).status_code == 200


def test_exempt_paths_pass_without_a_tenant():
    c = TestClient(make_app(hmac_keys={"k1": SECRET}, exempt_paths=["/healthz"]))
    assert c.get("/healthz").json() == {"ok": True}
    assert refused(c.get("/whoami"))


def test_jwks_url_fetched_lazily_and_refetched_at_most_every_30s(monkeypatch):
    calls = []

    def fetch(url):
        calls.append(url)
        return {"keys": [JWK]}

    v = Verifier(jwks="http://gw.invalid/.well-known/tenant-signing-keys", jwks_fetch=fetch)
    assert v.may_refresh() and not v.knows("k2")
    assert v.refresh_jwks() and v.knows("k2")
    assert not v.refresh_jwks(), "second fetch within 30 s"
    assert calls == ["http://gw.invalid/.well-known/tenant-signing-keys"]
    now = [time.monotonic() + 31]
    monkeypatch.setattr("tenant_gateway_context.signature.time.monotonic", lambda: now[0])
    assert v.refresh_jwks() and len(calls) == 2


def test_jwks_url_through_the_middleware(monkeypatch):
    calls = []
    monkeypatch.setattr("tenant_gateway_context.signature._fetch_json", lambda url: calls.append(url) or {"keys": [JWK]})
    c = TestClient(make_app(jwks="http://gw.invalid/jwks"))
    h = lambda: headers(version="v2", kid="k2", alg="ed25519", key=ED)  # noqa: E731
    assert c.get("/whoami", headers=h()).status_code == 200
    assert c.get("/whoami", headers=h()).status_code == 200
    assert refused(c.get("/whoami", headers=headers(version="v2", kid="k7", alg="ed25519", key=ED)))
    assert len(calls) == 1, "known kid: no refetch; unknown kid within 30 s: no refetch"


def test_replay_guard_is_bounded_and_forgets_expired():
    g = ReplayGuard(capacity=3)
    for i in range(5):
        assert g.check_and_remember(f"s{i}", expires_at=100, now=0)
    assert len(g) == 3
    assert not g.check_and_remember("s4", 100, 1)
    assert g.check_and_remember("s0", 100, 1), "evicted (oldest first)"
    assert g.check_and_remember("new", 300, 101) and len(g) == 1, "expired ones pruned"


def test_jobs_carry_the_tenant_and_do_not_leak(client):
    r = client.post("/jobs", json={"order": 1}, headers=headers("/jobs", method="POST", subject="zoë"))
    assert r.status_code == 200, r.text
    env = r.json()
    assert (env["tenant"], env["subject"], env["payload"]) == ("acme", "zoë", {"order": 1})
    seen = run_in_tenant(env, lambda p: (current_tenant(), p), service_key=SERVICE_KEY)
    assert seen[0] == TenantContext("acme", "enterprise", "zoë", "job", env["request_id"]) and seen[1] == {"order": 1}
    assert current_tenant() is None
    with pytest.raises(EnvelopeError):
        run_in_tenant(dict(env, tenant="globex"), lambda p: None, service_key=SERVICE_KEY)
    with pytest.raises(RuntimeError):
        job_envelope({}, service_key=SERVICE_KEY)


def test_run_in_tenant_restores_the_outer_context_and_supports_async():
    outer = TenantContext("globex", "free", None, "host", "r0")
    token = _current.set(outer)
    try:
        env = job_envelope({"x": 1}, service_key="k", issued_at=1)
        inner_env = dict(env)
        other = TenantContext("acme", "enterprise", None, "host", "r1")
        tok2 = _current.set(other)
        inner_env = job_envelope({"x": 2}, service_key="k")
        _current.reset(tok2)

        def nested(p):
            assert current_tenant().tenant == "acme"
            return run_in_tenant(env, lambda q: current_tenant().tenant, service_key="k") + "/" + current_tenant().tenant

        assert run_in_tenant(inner_env, nested, service_key="k") == "globex/acme"
        assert current_tenant() is outer

        async def job(p):
            await asyncio.sleep(0)
            return current_tenant().tenant, p

        aw = run_in_tenant(inner_env, job, service_key="k")
        assert asyncio.run(aw) == ("acme", {"x": 2})
        assert current_tenant() is outer
        with pytest.raises(EnvelopeError):
            run_in_tenant(env, lambda p: p, service_key="k", max_age_s=60)
    finally:
        _current.reset(token)
