"""The Starlette app used by the unit and end-to-end tests."""

import queue

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tenant_gateway_context import TenantContextMiddleware, current_tenant, job_envelope

SERVICE_KEY = b"service-key-for-tests"


def make_app(**middleware_kwargs):
    jobs = queue.Queue()

    async def whoami(request: Request):
        t = current_tenant()
        return JSONResponse({
            "tenant": t.tenant, "plan": t.plan, "subject": t.subject, "source": t.source,
            "request_id": t.request_id,
            # what arrived, so a test can replay it straight to the app
            "received": {k: v for k, v in request.headers.items()
                         if k.startswith("x-tenant-") or k in ("x-request-id", "host")},
            "path": request.url.path, "state_tenant": request.state.tenant.tenant,
        })

    async def enqueue(request: Request):
        body = await request.json()
        env = job_envelope(body, service_key=SERVICE_KEY)
        jobs.put(env)
        return JSONResponse(env)

    app = Starlette(routes=[Route("/whoami", whoami), Route("/strict/whoami", whoami), Route("/api/{rest:path}", whoami),
                            Route("/jobs", enqueue, methods=["POST"]),
                            Route("/healthz", lambda r: JSONResponse({"ok": current_tenant() is None}))])
    app.add_middleware(TenantContextMiddleware, **middleware_kwargs)
    app.state.jobs = jobs
    return app


def split_app(default, strict):
    """A plain ASGI dispatcher: /strict/... goes to `strict` (path kept), the rest to `default`."""

    async def asgi(scope, receive, send):
        if scope["type"] in ("http", "websocket") and scope.get("path", "").startswith("/strict/"):
            await strict(scope, receive, send)
        else:
            await default(scope, receive, send)

    return asgi
