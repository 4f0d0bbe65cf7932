#!/usr/bin/env python3
"""Writes signatures.json next to this file: the shared test vectors of the tenant signature
(v1, v2 with HMAC-SHA256 and Ed25519) and of the job envelope. See README.md for the schema.

Deliberately independent of the middleware packages (it only needs `cryptography`), with fixed
keys and timestamps, so its output never changes: `python3 generate.py --check` verifies that the
committed file is what this script writes.
"""

import base64
import hashlib
import hmac
import json
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

OUT = Path(__file__).with_name("signatures.json")
TS = 1764131234

HMAC_KEYS = {
    "k1": "test-signing-secret-0123456789abcdef",
    "k3": "second-hmac-secret-for-v2-vectors!",
}
ED_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")  # RFC 8032 test 1
ED_KID = "k2"
ED_OTHER_SEED = bytes(range(32))  # a key nobody trusts (forgeries)
SERVICE_KEY = "job-service-key-do-not-use-in-production"


def b64url(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode("ascii")


def enc_subject(s: str) -> str:
    return "".join(chr(b) if 0x21 <= b <= 0x7E and b != 0x25 else "%%%02X" % b for b in s.encode("utf-8"))


ed = Ed25519PrivateKey.from_private_bytes(ED_SEED)
ed_other = Ed25519PrivateKey.from_private_bytes(ED_OTHER_SEED)
ed_pub = ed.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def canonical(version, ts, r, aud):
    lines = [version, str(ts), r["request_id"], r["method"], r["authority"].lower(), r["path_and_query"],
             r["tenant"], r["plan"], r["subject_header"]]
    if version == "v2":
        lines += [r["source"], aud]
    return "\n".join(lines)


def raw_sig(alg, kid, data: bytes, key=None):
    if alg == "hmac-sha256":
        secret = key if key is not None else HMAC_KEYS[kid].encode()
        return hmac.new(secret, data, hashlib.sha256).digest()
    return (key or ed).sign(data)


def header(version, kid, alg, ts, aud, sig: bytes):
    if version == "v1":
        return f"v1;kid={kid};ts={ts};sig={b64url(sig)}"
    return f"v2;kid={kid};alg={alg};ts={ts};aud={aud};sig={b64url(sig)}"


def request(**kw):
    r = {
        "request_id": "req-0001",
        "method": "GET",
        "authority": "acme.gw.test",
        "path_and_query": "/",
        "tenant": "acme",
        "plan": "enterprise",
        "subject": "",
        "source": "host",
    }
    r.update(kw)
    r["subject_header"] = enc_subject(r["subject"])
    return r


CASES = [
    ("plain", request()),
    ("query string", request(method="POST", path_and_query="/api/orders?limit=10&cursor=a%2Fb&x=", request_id="01J0ABCDEF")),
    ("upper-case authority with port", request(authority="ACME.GW.Test:8080", path_and_query="/Mixed/Case?Q=V")),
    ("ipv6 authority", request(authority="[::1]:8443", tenant="globex", plan="free", source="sni,host")),
    ("token subject", request(subject="user-7", source="sni,host,token", path_and_query="/api/me")),
    ("non-ascii subject", request(subject="zoë", source="host,token", path_and_query="/api/me?lang=fr")),
    ("subject with space and percent", request(subject="a b%c/ü", source="token")),
    ("empty subject", request(subject="", method="DELETE", path_and_query="/api/items/42")),
]
SIGNERS = [  # version, alg, kid, audience
    ("v1", "hmac-sha256", "k1", None),
    ("v2", "hmac-sha256", "k3", "shared"),
    ("v2", "ed25519", "k2", "shared"),
    ("v2", "ed25519", "k2", "acme-dedicated"),
]


def signature_vectors():
    out = []
    for i, (name, r) in enumerate(CASES):
        for version, alg, kid, aud in SIGNERS:
            if aud == "acme-dedicated" and r["tenant"] != "acme":
                continue
            ts = TS + i
            c = canonical(version, ts, r, aud)
            sig = raw_sig(alg, kid, c.encode("utf-8"))
            label = f"{version} {alg} {name}" + (f" (aud {aud})" if aud == "acme-dedicated" else "")
            v = {"name": label, "version": version, "alg": alg, "kid": kid, "ts": ts,
                 "audience": aud, **r, "canonical": c, "header": header(version, kid, alg, ts, aud, sig)}
            out.append(v)
    return out


def verify_vectors(sigs):
    """Cases a verifier must accept or refuse (fresh verifier per case, no replay state)."""
    out = []
    by = {s["name"]: s for s in sigs}
    req_keys = ("request_id", "method", "authority", "path_and_query", "tenant", "plan", "subject_header", "source")

    def case(name, base, valid, reason, header=None, now=None, audience=None, request_changes=None, skew=300):
        req = {k: base[k] for k in req_keys}
        req.update(request_changes or {})
        out.append({"name": name, "header": base["header"] if header is None else header, "request": req,
                    "verifier": {"audience": audience, "max_skew_s": skew},
                    "now": base["ts"] if now is None else now, "valid": valid, "reason": reason})

    v1 = by["v1 hmac-sha256 query string"]
    v2h = by["v2 hmac-sha256 query string"]
    v2e = by["v2 ed25519 non-ascii subject"]
    for s in sigs:
        case(f"accept: {s['name']}", s, True, "ok")
        if s["audience"]:
            case(f"accept with expected audience: {s['name']}", s, True, "ok", audience=s["audience"])
    case("v1 at the edge of the skew window (+300)", v1, True, "ok", now=v1["ts"] + 300)
    case("v1 at the edge of the skew window (-300)", v1, True, "ok", now=v1["ts"] - 300)
    case("v1 stale (+301)", v1, False, "stale", now=v1["ts"] + 301)
    case("v1 from the future (-301)", v1, False, "stale", now=v1["ts"] - 301)
    case("v2 ed25519 stale with a 60 s window", v2e, False, "stale", now=v2e["ts"] + 61, skew=60)
    case("v1 refused when an audience is expected", v1, False, "audience", audience="shared")
    case("v2 hmac wrong audience", v2h, False, "audience", audience="acme-dedicated")
    case("v2 ed25519 wrong audience", v2e, False, "audience", audience="acme-dedicated")
    # A changed aud= field (the audience is signed): refused even with no expected audience.
    case("v2 ed25519 aud field rewritten", v2e, False, "mismatch", header=v2e["header"].replace("aud=shared", "aud=acme-dedicated"))
    for field, value in [("method", "PUT"), ("path_and_query", "/api/me?lang=en"), ("tenant", "globex"),
                         ("plan", "free"), ("subject_header", "zo%C3%AC"), ("subject_header", "zoë"),
                         ("authority", "evil.gw.test"), ("request_id", "req-0002"), ("source", "host")]:
        case(f"v2 ed25519 changed {field}", v2e, False, "mismatch", request_changes={field: value})
    case("v1 changed path", v1, False, "mismatch", request_changes={"path_and_query": "/api/orders?limit=11&cursor=a%2Fb&x="})
    case("v1 authority compared lower-case", v1, True, "ok", request_changes={"authority": "ACME.gw.TEST"})
    # Forgeries.
    c = v2e["canonical"].encode()
    case("v2 ed25519 signed by an untrusted key", v2e, False, "mismatch",
         header=header("v2", "k2", "ed25519", v2e["ts"], "shared", ed_other.sign(c)))
    case("v2 alg confusion: hmac-sha256 keyed with k2's public key", v2e, False, "alg",
         header=header("v2", "k2", "hmac-sha256", v2e["ts"], "shared", hmac.new(ed_pub, c, hashlib.sha256).digest()))
    c = v2h["canonical"].encode()
    case("v2 alg confusion: ed25519 claimed for hmac kid k3", v2h, False, "alg",
         header=header("v2", "k3", "ed25519", v2h["ts"], "shared", ed.sign(c)))
    case("unknown kid", v1, False, "unknown_kid", header=v1["header"].replace("kid=k1", "kid=k9"))
    flipped = v1["header"][:-2] + ("A" if v1["header"][-2] != "A" else "B") + v1["header"][-1]
    case("v1 forged sig", v1, False, "mismatch", header=flipped)
    sig = v1["header"].rsplit("=", 1)[1]
    # 32 bytes -> 43 chars, the last carrying 2 unused bits: a second spelling of the same bytes.
    alt = sig[:-1] + "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[
        ("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".index(sig[-1]) ^ 1)]
    case("v1 non-canonical base64url (unused bits set)", v1, False, "malformed", header=v1["header"][: -len(sig)] + alt)
    for bad in ["", "v1", "v3;kid=k1;ts=1;sig=AA", "v1;ts=%d;kid=k1;sig=AA" % v1["ts"],
                v1["header"] + ";extra=1", v1["header"] + "=", v1["header"].replace("ts=", "ts=+"),
                v2h["header"].replace("alg=hmac-sha256;", ""), v2h["header"].replace("alg=hmac-sha256", "alg=HS256"),
                v1["header"].replace(";", "; ")]:
        reason = {"": "missing", "v3;kid=k1;ts=1;sig=AA": "version"}.get(bad, "alg" if "HS256" in bad else "malformed")
        case(f"malformed header {bad[:40]!r}", v1, False, reason, header=bad)
    return out


def jcs(value):
    """The JCS form for the payloads below (no floats, BMP keys only: json.dumps matches RFC 8785)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def envelope_vectors():
    out = []
    contexts = [
        ("order job", {"tenant": "acme", "plan": "enterprise", "subject": "user-7", "request_id": "req-0001"},
         {"order": 42, "items": [{"sku": "A-1", "qty": 2}, {"sku": "B-2", "qty": 1}], "note": None, "rush": True}),
        ("non-ascii subject and payload", {"tenant": "globex", "plan": "free", "subject": "zoë", "request_id": "req-0002"},
         {"zeta": "ünïcödé \"quoted\"\n", "alpha": [], "Beta": {}, "émoji": "🎉", "n": -17}),
        ("no subject, scalar payload", {"tenant": "acme", "plan": "enterprise", "subject": None, "request_id": "req-0003"},
         "just a string"),
    ]
    for i, (name, ctx, payload) in enumerate(contexts):
        issued = TS + 100 + i
        body = {**ctx, "issued_at": issued, "payload": payload}
        c = "job-v1\n" + jcs(body)
        sig = b64url(hmac.new(SERVICE_KEY.encode(), c.encode("utf-8"), hashlib.sha256).digest())
        env = {"v": 1, **ctx, "issued_at": issued, "payload": payload, "sig": sig}
        out.append({"name": name, "service_key": SERVICE_KEY, "context": ctx, "issued_at": issued,
                    "payload": payload, "canonical": c, "envelope": env})
    return out


def envelope_rejections(envs):
    base = envs[0]["envelope"]
    out = []
    for name, change in [
        ("tenant changed", {"tenant": "globex"}),
        ("plan changed", {"plan": "free"}),
        ("subject changed", {"subject": "user-8"}),
        ("subject removed", {"subject": None}),
        ("request_id changed", {"request_id": "req-9999"}),
        ("issued_at changed", {"issued_at": base["issued_at"] + 1}),
        ("payload changed", {"payload": {**base["payload"], "order": 43}}),
        ("sig replaced", {"sig": b64url(b"\0" * 32)}),
        ("wrong version", {"v": 2}),
        ("issued_at as a string", {"issued_at": str(base["issued_at"])}),
    ]:
        out.append({"name": name, "service_key": SERVICE_KEY, "envelope": {**base, **change}, "valid": False})
    out.append({"name": "other service key", "service_key": SERVICE_KEY + "x", "envelope": base, "valid": False})
    return out


JCS_CASES = [  # input -> RFC 8785 output (numbers as ECMAScript writes them)
    ({"b": 1, "a": 2.5, "c": [1.0, 100.0, 1e21, 1e-7, 0.000001, 1e16, -0.0]},
     '{"a":2.5,"b":1,"c":[1,100,1e+21,1e-7,0.000001,10000000000000000,0]}'),
    ({"\u20ac": 1, "\ud83d\ude00": 2, "\ufb33": 3, "a": 4}, None),  # ordered by UTF-16 code units
    ({"s": "tab\tnl\nquote\"back\\slash\u0001\u001f\u007f"}, '{"s":"tab\\tnl\\nquote\\"back\\\\slash\\u0001\\u001f\u007f"}'),
    ([True, False, None, "é", 0, -1, 9007199254740991], '[true,false,null,"é",0,-1,9007199254740991]'),
]


def jcs_vectors():
    out = []
    for value, expected in JCS_CASES:
        if expected is None:  # "\u20ac" < "\ud83d\ude00" < "\ufb33" in UTF-16 (not in code points)
            expected = '{"a":4,"\u20ac":1,"\U0001F600":2,"\ufb33":3}'
            value = {"\u20ac": 1, "\U0001F600": 2, "\ufb33": 3, "a": 4}
        out.append({"input": value, "output": expected})
    return out


def document():
    sigs = signature_vectors()
    envs = envelope_vectors()
    pem = ed.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                           serialization.NoEncryption()).decode()
    pub_pem = ed.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    jwk = {"kty": "OKP", "crv": "Ed25519", "kid": ED_KID, "x": b64url(ed_pub), "alg": "EdDSA", "use": "sig"}
    return {
        "schema": "tenant-gateway/signature-vectors/1",
        "generated_by": "middleware/testvectors/generate.py",
        "keys": {
            "k1": {"algorithm": "hmac-sha256", "secret": HMAC_KEYS["k1"]},
            "k3": {"algorithm": "hmac-sha256", "secret": HMAC_KEYS["k3"]},
            "k2": {"algorithm": "ed25519", "seed_hex": ED_SEED.hex(), "public_key_b64url": b64url(ed_pub),
                   "private_key_pkcs8_pem": pem, "public_key_pem": pub_pem},
        },
        "jwks": {"keys": [jwk]},
        "signatures": sigs,
        "verify": verify_vectors(sigs),
        "envelopes": envs,
        "envelope_rejections": envelope_rejections(envs),
        "jcs": jcs_vectors(),
    }


def main():
    text = json.dumps(document(), indent=1, ensure_ascii=False) + "\n"
    if "--check" in sys.argv:
        if OUT.read_text(encoding="utf-8") != text:
            sys.exit(f"{OUT.name} is not what generate.py writes; run it again")
        print(f"{OUT.name} is up to date")
        return
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
