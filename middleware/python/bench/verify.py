"""Verification cost per request: python bench/verify.py (from middleware/python).

Times Verifier.verify (parse, key lookup, skew, HMAC or Ed25519, replay guard) on fresh
signatures, and the whole middleware on an in-process ASGI call (no sockets, no framework).
"""

import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from tenant_gateway_context import SignedFields, TenantContextMiddleware, Verifier  # noqa: E402
from tenant_gateway_context.signature import b64url, sign  # noqa: E402

N = 20000
SECRET = b"bench-secret-0123456789abcdef"
ED = Ed25519PrivateKey.from_private_bytes(bytes(32))
JWKS = {"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k2", "x": b64url(ED.public_key().public_bytes_raw())}]}


def cases(version, alg, kid, key, n):
    now = int(time.time())
    out = []
    for i in range(n):
        f = SignedFields(f"req-{i}", "GET", "acme.gw.test", f"/api/orders?page={i}", "acme", "enterprise", "user-7",
                         "host,token")
        out.append((sign(version, kid, key, now, f, alg=alg, audience="shared"), f))
    return out


def bench(label, version, alg, kid, key):
    v = Verifier({"k1": SECRET}, JWKS, None, replay_cache_size=N)
    data = cases(version, alg, kid, key, N)
    t0 = time.perf_counter()
    for h, f in data:
        v.verify(h, f)
    dt = (time.perf_counter() - t0) / N
    print(f"{label:<28} {dt * 1e6:7.1f} µs/request")


async def asgi_bench():
    async def app(scope, receive, send):
        pass

    mw = TenantContextMiddleware(app, hmac_keys={"k1": SECRET}, replay_cache_size=N)
    scopes = []
    for h, f in cases("v1", "hmac-sha256", "k1", SECRET, N):
        path, _, qs = f.path_and_query.partition("?")
        scopes.append({"type": "http", "method": "GET", "path": path, "raw_path": path.encode(),
                       "query_string": qs.encode(), "headers": [
                           (b"host", b"acme.gw.test"), (b"x-request-id", f.request_id.encode()),
                           (b"x-tenant-id", b"acme"), (b"x-tenant-plan", b"enterprise"),
                           (b"x-tenant-subject", b"user-7"), (b"x-tenant-source", b"host,token"),
                           (b"x-tenant-signature", h.encode())]})
    t0 = time.perf_counter()
    for s in scopes:
        await mw(s, None, None)
    dt = (time.perf_counter() - t0) / N
    print(f"{'ASGI middleware, v1 HMAC':<28} {dt * 1e6:7.1f} µs/request")


if __name__ == "__main__":
    print(f"Python {sys.version.split()[0]}, {N} requests each")
    bench("v1 HMAC-SHA256", "v1", "hmac-sha256", "k1", SECRET)
    bench("v2 HMAC-SHA256", "v2", "hmac-sha256", "k1", SECRET)
    bench("v2 Ed25519", "v2", "ed25519", "k2", ED)
    asyncio.run(asgi_bench())
