"""Verification of the gateway's `x-tenant-signature` header (v1 and v2).

v1: ``v1;kid=<id>;ts=<unix s>;sig=<b64url>``, HMAC-SHA256 over the lines
``v1, ts, request_id, METHOD, authority (lower-case), path?query, tenant, plan, subject``.

v2: ``v2;kid=<id>;alg=ed25519|hmac-sha256;ts=<unix s>;aud=<pool>;sig=<b64url>`` over the lines
``v2, ts, request_id, METHOD, authority, path?query, tenant, plan, subject, source, audience``.

The subject is signed as sent: percent-encoded UTF-8 when it is not entirely visible ASCII.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import threading
import time
import urllib.request
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Union

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

DEFAULT_MAX_SKEW_S = 300
DEFAULT_REPLAY_CACHE_SIZE = 100_000
JWKS_REFETCH_INTERVAL_S = 30.0

HMAC_SHA256 = "hmac-sha256"
ED25519 = "ed25519"

_B64URL = re.compile(r"[A-Za-z0-9_-]+")
_DIGITS = re.compile(r"[0-9]{1,19}")
_PCT = re.compile(r"%([0-9A-Fa-f]{2})")


class SignatureError(Exception):
    """A refused signature. ``reason`` is a short machine-readable word (never sent to clients)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class SignedFields:
    """What the upstream received, as covered by the signature (header values as received)."""

    request_id: str
    method: str
    authority: str
    path_and_query: str
    tenant: str
    plan: str
    subject: str = ""  # the x-tenant-subject header value as received (percent-encoded), or ""
    source: str = ""  # the x-tenant-source header value (v2 only)


@dataclass(frozen=True)
class ParsedSignature:
    version: str
    kid: str
    alg: str
    ts: int
    aud: Optional[str]
    sig: str


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict base64url without padding; refuses any non-canonical encoding."""
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise SignatureError("malformed")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise SignatureError("malformed") from None
    if b64url(raw) != text:  # stray trailing bits would make a second spelling of one signature
        raise SignatureError("malformed")
    return raw


def encode_subject(subject: str) -> str:
    """The subject as the gateway sends and signs it: bytes outside 0x21..0x7E and '%' become %XX."""
    out = []
    for b in subject.encode("utf-8"):
        if 0x21 <= b <= 0x7E and b != 0x25:
            out.append(chr(b))
        else:
            out.append("%%%02X" % b)
    return "".join(out)


def decode_subject(value: str) -> str:
    """Inverse of :func:`encode_subject` (the subject handlers see). Invalid UTF-8 is refused."""
    if "%" not in value:
        return value
    try:
        return _decode_pct(value)
    except (UnicodeDecodeError, UnicodeEncodeError, ValueError):
        raise SignatureError("malformed") from None


def _decode_pct(value: str) -> str:
    out = bytearray()
    i = 0
    while i < len(value):
        c = value[i]
        if c == "%":
            h = value[i + 1 : i + 3]
            if len(h) != 2 or not _PCT.fullmatch("%" + h):
                raise ValueError("bad percent-encoding")
            out.append(int(h, 16))
            i += 3
        else:
            out += c.encode("ascii")
            i += 1
    return out.decode("utf-8")


def canonical(version: str, ts: int, f: SignedFields, audience: Optional[str] = None) -> bytes:
    """The exact bytes the gateway signs."""
    lines = [
        version,
        str(ts),
        f.request_id,
        f.method,
        f.authority.lower(),
        f.path_and_query,
        f.tenant,
        f.plan,
        f.subject,
    ]
    if version == "v2":
        lines += [f.source, audience or ""]
    return "\n".join(lines).encode("utf-8")


def parse_header(value: str) -> ParsedSignature:
    """Parses a v1 or v2 header value; fields must be in the gateway's order."""
    parts = value.split(";")
    version = parts[0]
    if version == "v1":
        names = ("kid", "ts", "sig")
    elif version == "v2":
        names = ("kid", "alg", "ts", "aud", "sig")
    else:
        raise SignatureError("version" if re.fullmatch(r"v[0-9]+", version) else "malformed")
    if len(parts) != len(names) + 1:
        raise SignatureError("malformed")
    got: Dict[str, str] = {}
    for name, part in zip(names, parts[1:]):
        k, sep, v = part.partition("=")
        if not sep or k != name or not v:
            raise SignatureError("malformed")
        got[name] = v
    if not _DIGITS.fullmatch(got["ts"]):
        raise SignatureError("malformed")
    alg = got.get("alg", HMAC_SHA256)
    if alg not in (HMAC_SHA256, ED25519):
        raise SignatureError("alg")
    return ParsedSignature(version, got["kid"], alg, int(got["ts"]), got.get("aud"), got["sig"])


def _as_bytes(secret: Union[str, bytes]) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)


def ed25519_key(material: Any) -> Ed25519PublicKey:
    """An Ed25519 public key from raw 32 bytes, a PEM (str/bytes), a JWK dict or a key object."""
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    if isinstance(material, Ed25519PublicKey):
        return material
    if isinstance(material, Mapping):
        if material.get("kty") != "OKP" or material.get("crv") != "Ed25519":
            raise ValueError("not an OKP/Ed25519 JWK")
        return Ed25519PublicKey.from_public_bytes(b64url_decode(str(material.get("x", ""))))
    if isinstance(material, str):
        material = material.encode("ascii")
    if isinstance(material, (bytes, bytearray)):
        if len(material) == 32:
            return Ed25519PublicKey.from_public_bytes(bytes(material))
        key = load_pem_public_key(bytes(material))
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("PEM is not an Ed25519 public key")
        return key
    raise TypeError("unsupported Ed25519 key material")


def keys_from_jwks(doc: Mapping[str, Any]) -> Dict[str, Ed25519PublicKey]:
    """The OKP/Ed25519 signing keys of a JWKS document, by kid (other keys are ignored)."""
    out: Dict[str, Ed25519PublicKey] = {}
    for jwk in doc.get("keys", []) or []:
        if not isinstance(jwk, Mapping) or not jwk.get("kid"):
            continue
        if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
            continue
        if jwk.get("use", "sig") != "sig" or jwk.get("alg", "EdDSA") != "EdDSA":
            continue
        try:
            out[str(jwk["kid"])] = ed25519_key(jwk)
        except (ValueError, SignatureError):
            continue
    return out


class ReplayGuard:
    """Signatures accepted within the skew window; bounded (the oldest entries go first)."""

    def __init__(self, capacity: int = DEFAULT_REPLAY_CACHE_SIZE) -> None:
        self.capacity = capacity
        self._seen: "OrderedDict[str, float]" = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._seen)

    def check_and_remember(self, sig: str, expires_at: float, now: float) -> bool:
        """False when ``sig`` was accepted before and has not expired; otherwise remembers it."""
        with self._lock:
            seen = self._seen
            # Entries go in roughly in expiry order: prune from the front while expired.
            while seen:
                first_sig, first_exp = next(iter(seen.items()))
                if first_exp >= now:
                    break
                del seen[first_sig]
            exp = seen.get(sig)
            if exp is not None and exp >= now:
                return False
            seen[sig] = expires_at
            seen.move_to_end(sig)
            while len(seen) > self.capacity:
                seen.popitem(last=False)
            return True


class Verifier:
    """Checks `x-tenant-signature` values: keys by kid, skew window, audience, replays."""

    def __init__(
        self,
        hmac_keys: Optional[Mapping[str, Union[str, bytes]]] = None,
        jwks: Union[None, str, Mapping[str, Any]] = None,
        audience: Optional[str] = None,
        max_skew_s: int = DEFAULT_MAX_SKEW_S,
        *,
        ed25519_keys: Optional[Mapping[str, Any]] = None,
        replay_cache_size: int = DEFAULT_REPLAY_CACHE_SIZE,
        clock: Callable[[], float] = time.time,
        jwks_fetch: Optional[Callable[[str], Mapping[str, Any]]] = None,
    ) -> None:
        self._hmac: Dict[str, bytes] = {k: _as_bytes(v) for k, v in (hmac_keys or {}).items()}
        self._ed: Dict[str, Ed25519PublicKey] = {}
        for kid, material in (ed25519_keys or {}).items():
            self._ed[kid] = ed25519_key(material)
        self.jwks_url: Optional[str] = None
        if isinstance(jwks, str):
            self.jwks_url = jwks
        elif jwks is not None:
            self._ed.update(keys_from_jwks(jwks))
        clash = set(self._hmac) & set(self._ed)
        if clash:
            raise ValueError(f"kid used for both an HMAC and an Ed25519 key: {sorted(clash)}")
        if not self._hmac and not self._ed and not self.jwks_url:
            raise ValueError("no keys: give hmac_keys, jwks or ed25519_keys")
        self.audience = audience
        self.max_skew_s = int(max_skew_s)
        self.replay = ReplayGuard(replay_cache_size)
        self.clock = clock
        self._jwks_fetch = jwks_fetch or _fetch_json
        self._jwks_fetched_at: Optional[float] = None
        self._jwks_lock = threading.Lock()

    # -- JWKS ------------------------------------------------------------------------------
    def knows(self, kid: str) -> bool:
        return kid in self._hmac or kid in self._ed

    def may_refresh(self) -> bool:
        if self.jwks_url is None:
            return False
        last = self._jwks_fetched_at
        return last is None or time.monotonic() - last >= JWKS_REFETCH_INTERVAL_S

    def refresh_jwks(self) -> bool:
        """Fetches the JWKS URL (at most every 30 s); True when it was fetched."""
        with self._jwks_lock:
            if not self.may_refresh():
                return False
            self._jwks_fetched_at = time.monotonic()
            assert self.jwks_url is not None
            try:
                doc = self._jwks_fetch(self.jwks_url)
            except Exception:  # unreachable JWKS: keep the keys we have
                return False
            fresh = {k: v for k, v in keys_from_jwks(doc).items() if k not in self._hmac}
            self._ed = fresh
            return True

    # -- verification ----------------------------------------------------------------------
    def check(self, header: Optional[str], fields: SignedFields, now: Optional[float] = None) -> ParsedSignature:
        """Everything but the replay guard. Raises :class:`SignatureError`."""
        if not header:
            raise SignatureError("missing")
        p = parse_header(header)
        if p.version == "v1" and self.audience is not None:
            raise SignatureError("audience")  # v1 names no audience: refused when one is expected
        if p.kid in self._hmac:
            if p.alg != HMAC_SHA256:
                raise SignatureError("alg")
        elif p.kid in self._ed:
            if p.alg != ED25519:
                raise SignatureError("alg")
        else:
            raise SignatureError("unknown_kid")
        if self.audience is not None and p.aud != self.audience:
            raise SignatureError("audience")
        now = self.clock() if now is None else now
        if abs(p.ts - now) > self.max_skew_s:
            raise SignatureError("stale")
        sig = b64url_decode(p.sig)
        data = canonical(p.version, p.ts, fields, p.aud)
        if p.alg == HMAC_SHA256:
            expected = hmac.new(self._hmac[p.kid], data, hashlib.sha256).digest()
            if not hmac.compare_digest(expected, sig):
                raise SignatureError("mismatch")
        else:
            if len(sig) != 64:
                raise SignatureError("mismatch")
            try:
                self._ed[p.kid].verify(sig, data)
            except InvalidSignature:
                raise SignatureError("mismatch") from None
        return p

    def verify(self, header: Optional[str], fields: SignedFields, now: Optional[float] = None) -> ParsedSignature:
        """:meth:`check`, then the replay guard (a signature is accepted once per window)."""
        now = self.clock() if now is None else now
        p = self.check(header, fields, now)
        if not self.replay.check_and_remember(p.sig, p.ts + self.max_skew_s, now):
            raise SignatureError("replay")
        return p


def sign(
    version: str,
    kid: str,
    key: Union[str, bytes, Any],
    ts: int,
    fields: SignedFields,
    *,
    alg: str = HMAC_SHA256,
    audience: str = "",
) -> str:
    """Produces a header value like the gateway's (tests, benchmarks, vectors)."""
    data = canonical(version, ts, fields, audience)
    if alg == HMAC_SHA256:
        sig = hmac.new(_as_bytes(key), data, hashlib.sha256).digest()
    else:
        sig = key.sign(data)  # an Ed25519PrivateKey
    if version == "v1":
        return f"v1;kid={kid};ts={ts};sig={b64url(sig)}"
    return f"v2;kid={kid};alg={alg};ts={ts};aud={audience};sig={b64url(sig)}"


def _fetch_json(url: str) -> Mapping[str, Any]:
    req = urllib.request.Request(url, headers={"accept": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310 (the operator's URL)
        return json.loads(resp.read(1 << 20))


__all__ = [
    "SignatureError",
    "SignedFields",
    "ParsedSignature",
    "Verifier",
    "ReplayGuard",
    "canonical",
    "parse_header",
    "encode_subject",
    "decode_subject",
    "keys_from_jwks",
    "sign",
    "b64url",
    "b64url_decode",
]
