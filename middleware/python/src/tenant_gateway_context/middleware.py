"""Pure ASGI middleware and the tenant context (contextvars)."""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, TypeVar, Union

from .envelope import make_envelope, open_envelope
from .signature import (
    DEFAULT_MAX_SKEW_S,
    DEFAULT_REPLAY_CACHE_SIZE,
    SignatureError,
    SignedFields,
    Verifier,
    decode_subject,
    parse_header,
)

T = TypeVar("T")

ERROR_BODY = b'{"error":"invalid_tenant_signature"}'


@dataclass(frozen=True)
class TenantContext:
    """The verified tenant of the current request (or job)."""

    tenant: str
    plan: str
    subject: Optional[str]  # decoded (e.g. "zoë"); None when the gateway saw no token
    source: str  # x-tenant-source, e.g. "sni,host,token"; "job" inside run_in_tenant
    request_id: str


_current: contextvars.ContextVar[Optional[TenantContext]] = contextvars.ContextVar(
    "tenant_gateway_context", default=None
)


def current_tenant() -> Optional[TenantContext]:
    """The tenant of the request or job being handled, or None outside one."""
    return _current.get()


_HEADERS = (
    b"x-tenant-signature",
    b"x-tenant-id",
    b"x-tenant-plan",
    b"x-tenant-subject",
    b"x-tenant-source",
    b"x-request-id",
    b"host",
)


def _collect(raw: Iterable[Tuple[bytes, bytes]]) -> Dict[bytes, str]:
    """The headers the signature covers; a repeated one or a non-ASCII value is refused."""
    out: Dict[bytes, str] = {}
    for name, value in raw:
        name = name.lower()
        if name in _HEADERS:
            if name in out:
                raise SignatureError("malformed")
            try:
                out[name] = value.decode("ascii")
            except UnicodeDecodeError:
                raise SignatureError("malformed") from None
    return out


def _path_and_query(scope: Mapping[str, Any]) -> str:
    raw = scope.get("raw_path")
    if raw is None:
        from urllib.parse import quote

        raw = quote(scope.get("path", "/")).encode("ascii")
    pq = raw.decode("latin-1")
    qs = scope.get("query_string") or b""
    if qs:
        pq += "?" + qs.decode("latin-1")
    return pq


class TenantContextMiddleware:
    """ASGI middleware: verifies the gateway's signature, then runs the app with the tenant set.

    ``app.add_middleware(TenantContextMiddleware, hmac_keys={"k1": b"..."}, jwks=None,
    audience=None, max_skew_s=300)``. ``jwks`` is a JWKS dict or a URL (the gateway's admin
    ``/.well-known/tenant-signing-keys``), fetched on first use and again for an unknown kid at
    most every 30 s. With ``audience`` set, v1 signatures (which name no audience) are refused.
    Paths in ``exempt_paths`` (exact match) pass without a signature and without a tenant.
    """

    def __init__(
        self,
        app: Callable[..., Awaitable[None]],
        hmac_keys: Optional[Mapping[str, Union[str, bytes]]] = None,
        jwks: Union[None, str, Mapping[str, Any]] = None,
        audience: Optional[str] = None,
        max_skew_s: int = DEFAULT_MAX_SKEW_S,
        *,
        ed25519_keys: Optional[Mapping[str, Any]] = None,
        replay_cache_size: int = DEFAULT_REPLAY_CACHE_SIZE,
        exempt_paths: Iterable[str] = (),
        on_reject: Optional[Callable[[Mapping[str, Any], str], None]] = None,
        verifier: Optional[Verifier] = None,
    ) -> None:
        self.app = app
        self.verifier = verifier or Verifier(
            hmac_keys,
            jwks,
            audience,
            max_skew_s,
            ed25519_keys=ed25519_keys,
            replay_cache_size=replay_cache_size,
        )
        self.exempt_paths = frozenset(exempt_paths)
        self.on_reject = on_reject

    async def _verify(self, scope: Mapping[str, Any]) -> TenantContext:
        h = _collect(scope.get("headers") or ())
        header = h.get(b"x-tenant-signature")
        if not header:
            raise SignatureError("missing")
        v = self.verifier
        if v.jwks_url is not None:
            kid = parse_header(header).kid
            if not v.knows(kid) and v.may_refresh():
                await asyncio.get_running_loop().run_in_executor(None, v.refresh_jwks)
        try:
            fields = SignedFields(
                request_id=h[b"x-request-id"],
                method=scope.get("method", "GET") if scope["type"] == "http" else "GET",
                authority=h[b"host"],
                path_and_query=_path_and_query(scope),
                tenant=h[b"x-tenant-id"],
                plan=h[b"x-tenant-plan"],
                subject=h.get(b"x-tenant-subject", ""),
                source=h.get(b"x-tenant-source", ""),
            )
        except KeyError:
            raise SignatureError("malformed") from None
        v.verify(header, fields)
        subject = h.get(b"x-tenant-subject")
        return TenantContext(
            tenant=fields.tenant,
            plan=fields.plan,
            subject=decode_subject(subject) if subject is not None else None,
            source=fields.source,
            request_id=fields.request_id,
        )

    async def __call__(self, scope: Dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] not in ("http", "websocket") or scope.get("path") in self.exempt_paths:
            await self.app(scope, receive, send)
            return
        try:
            ctx = await self._verify(scope)
        except SignatureError as e:
            if self.on_reject is not None:
                self.on_reject(scope, e.reason)
            await _refuse(scope, send)
            return
        scope.setdefault("state", {})
        scope["state"]["tenant"] = ctx
        token = _current.set(ctx)
        try:
            await self.app(scope, receive, send)
        finally:
            _current.reset(token)


async def _refuse(scope: Mapping[str, Any], send: Callable[..., Any]) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})  # before accept: the server answers 403
        return
    headers: List[Tuple[bytes, bytes]] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(ERROR_BODY)).encode()),
    ]
    await send({"type": "http.response.start", "status": 401, "headers": headers})
    await send({"type": "http.response.body", "body": ERROR_BODY})


def job_envelope(payload: Any, service_key: Union[str, bytes], *, issued_at: Optional[int] = None) -> Dict[str, Any]:
    """A signed, JSON-serialisable envelope carrying the current tenant with ``payload``."""
    ctx = current_tenant()
    if ctx is None:
        raise RuntimeError("job_envelope() needs a tenant context (call it while handling a request or job)")
    return make_envelope(
        payload,
        tenant=ctx.tenant,
        plan=ctx.plan,
        subject=ctx.subject,
        request_id=ctx.request_id,
        service_key=service_key,
        issued_at=issued_at,
    )


def run_in_tenant(
    env: Mapping[str, Any],
    fn: Callable[[Any], T],
    service_key: Union[str, bytes],
    *,
    max_age_s: Optional[float] = None,
) -> T:
    """Verifies ``env`` (EnvelopeError if it does not), then returns ``fn(payload)`` run with the
    envelope's tenant as the current tenant; the previous context is restored afterwards. For an
    async ``fn`` the result is an awaitable that holds the context while it is awaited."""
    opened = open_envelope(env, service_key=service_key, max_age_s=max_age_s)
    ctx = TenantContext(
        tenant=opened["tenant"],
        plan=opened["plan"],
        subject=opened.get("subject"),
        source="job",
        request_id=opened["request_id"],
    )
    token = _current.set(ctx)
    try:
        result = fn(opened["payload"])
    finally:
        _current.reset(token)
    if inspect.isawaitable(result):
        return _await_in(ctx, result)  # type: ignore[return-value]
    return result


async def _await_in(ctx: TenantContext, aw: Awaitable[T]) -> T:
    token = _current.set(ctx)
    try:
        return await aw
    finally:
        _current.reset(token)
