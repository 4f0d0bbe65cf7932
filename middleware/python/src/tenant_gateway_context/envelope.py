"""Signed job envelopes: the tenant context carried into background jobs.

Envelope (a JSON object)::

    {"v": 1, "tenant": .., "plan": .., "subject": .. or null, "request_id": ..,
     "issued_at": <unix s>, "payload": <json>, "sig": "<b64url HMAC-SHA256(service_key, canonical)>"}

canonical = ``b"job-v1\\n" + JCS({"issued_at", "payload", "plan", "request_id", "subject", "tenant"})``
where JCS is the JSON Canonicalization Scheme (RFC 8785): keys sorted by UTF-16 code units, no
whitespace, ECMAScript number formatting, strings as JSON.stringify writes them. The Node package
computes the same bytes, so a job queued by one language can be run by the other.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import time
from typing import Any, Dict, Mapping, Optional, Union

from .signature import b64url

ENVELOPE_VERSION = 1
_MAX_SAFE_INT = 2**53 - 1


class EnvelopeError(Exception):
    """A job envelope that is malformed or whose signature does not verify."""


def _es_number(x: float) -> str:
    """A float as ECMAScript's Number.prototype.toString writes it (RFC 8785 section 3.2.2.3)."""
    if math.isnan(x) or math.isinf(x):
        raise ValueError("NaN and Infinity are not JSON")
    if x == 0:
        return "0"
    if x < 0:
        return "-" + _es_number(-x)
    r = repr(x)  # shortest round-trip digits, as ECMAScript requires
    mant, _, exp_s = r.partition("e")
    exp = int(exp_s) if exp_s else 0
    ip, _, fp = mant.partition(".")
    raw = ip + fp
    lead = len(raw) - len(raw.lstrip("0"))
    digits = raw.strip("0")
    n = len(ip) + exp - lead  # value = 0.<digits> * 10**n
    k = len(digits)
    if k <= n <= 21:
        return digits + "0" * (n - k)
    if 0 < n <= 21:
        return digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return "0." + "0" * (-n) + digits
    e = n - 1
    sign = "+" if e >= 0 else "-"
    head = digits if k == 1 else digits[0] + "." + digits[1:]
    return f"{head}e{sign}{abs(e)}"


def canonical_json(value: Any) -> str:
    """RFC 8785 (JCS) serialisation. Integers beyond 2**53 must be exactly representable as doubles."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        if abs(value) <= _MAX_SAFE_INT:
            return str(value)
        as_float = float(value)  # JSON numbers are IEEE doubles (RFC 8785): exact ones only
        if int(as_float) != value:
            raise ValueError("integer not exactly representable as a double cannot be canonicalised")
        return _es_number(as_float)
    if isinstance(value, float):
        return _es_number(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(canonical_json(v) for v in value) + "]"
    if isinstance(value, Mapping):
        for k in value:
            if not isinstance(k, str):
                raise TypeError("object keys must be strings")
        items = sorted(value.items(), key=lambda kv: kv[0].encode("utf-16-be"))
        return "{" + ",".join(json.dumps(k, ensure_ascii=False) + ":" + canonical_json(v) for k, v in items) + "}"
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def envelope_canonical(env: Mapping[str, Any]) -> bytes:
    body = {k: env.get(k) for k in ("tenant", "plan", "subject", "request_id", "issued_at", "payload")}
    return b"job-v1\n" + canonical_json(body).encode("utf-8")


def _key(service_key: Union[str, bytes]) -> bytes:
    key = service_key.encode("utf-8") if isinstance(service_key, str) else bytes(service_key)
    if not key:
        raise ValueError("service_key must not be empty")
    return key


def make_envelope(
    payload: Any,
    *,
    tenant: str,
    plan: str,
    subject: Optional[str],
    request_id: str,
    service_key: Union[str, bytes],
    issued_at: Optional[int] = None,
) -> Dict[str, Any]:
    env: Dict[str, Any] = {
        "v": ENVELOPE_VERSION,
        "tenant": tenant,
        "plan": plan,
        "subject": subject,
        "request_id": request_id,
        "issued_at": int(time.time()) if issued_at is None else int(issued_at),
        "payload": payload,
    }
    env["sig"] = b64url(hmac.new(_key(service_key), envelope_canonical(env), hashlib.sha256).digest())
    return env


def open_envelope(
    env: Any, *, service_key: Union[str, bytes], max_age_s: Optional[float] = None, now: Optional[float] = None
) -> Dict[str, Any]:
    """Checks shape and signature (constant time); returns the envelope. Raises EnvelopeError."""
    if not isinstance(env, Mapping) or env.get("v") != ENVELOPE_VERSION:
        raise EnvelopeError("not a v1 job envelope")
    for name in ("tenant", "plan", "request_id", "sig"):
        if not isinstance(env.get(name), str) or not env.get(name):
            raise EnvelopeError(f"envelope field {name!r} missing or not a string")
    if env.get("subject") is not None and not isinstance(env.get("subject"), str):
        raise EnvelopeError("envelope field 'subject' must be a string or null")
    issued = env.get("issued_at")
    if not isinstance(issued, int) or isinstance(issued, bool):
        raise EnvelopeError("envelope field 'issued_at' must be an integer")
    if "payload" not in env:
        raise EnvelopeError("envelope has no payload")
    try:
        expected = b64url(hmac.new(_key(service_key), envelope_canonical(env), hashlib.sha256).digest())
    except (TypeError, ValueError) as e:
        raise EnvelopeError(f"envelope payload cannot be canonicalised: {e}") from None
    if not hmac.compare_digest(expected.encode("ascii"), str(env["sig"]).encode("utf-8", "replace")):
        raise EnvelopeError("envelope signature does not verify")
    if max_age_s is not None:
        now = time.time() if now is None else now
        if now - issued > max_age_s:
            raise EnvelopeError("envelope is older than max_age_s")
    return dict(env)


__all__ = ["EnvelopeError", "canonical_json", "envelope_canonical", "make_envelope", "open_envelope"]
