"""HTTP routes (Starlette). Handlers parse, validate and enqueue; they never score.

=====================  =======================================================================
``POST /v1/samples``   one JSON sample, a JSON array or NDJSON -> ``{"received", "accepted",
                       "rejected", "errors": [{"index", "status", "error"}, ...]}``; 200 when
                       samples were accepted, 400 malformed body, 413 too large, 415 wrong
                       content type, 421 all for other shards, 422 none valid, 429 queue full
                       (``Retry-After``; nothing of the request was accepted), 503 draining
``GET /v1/status``     versions, shard, queue, endpoints (``?limit=``), firing alerts
``POST /v1/reload``    reload the models now (also done automatically on promotion)
``GET /metrics``       Prometheus text format
``GET /healthz``       the process and its scoring worker are alive
``GET /readyz``        models loaded (or rules-only by choice), queue not saturated, not draining
=====================  =======================================================================

With a bearer token configured (``$OCAD_SERVE_TOKEN`` by default; required off loopback),
``/v1/*`` need ``Authorization: Bearer <token>``; ``/metrics`` and the probes stay open for
Prometheus and the kubelet.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from ocad_detectors.serve.ingest import BadRequest, parse_body
from ocad_detectors.serve.service import DetectorService

__all__ = ["build_app"]

logger = logging.getLogger("ocad_detectors.serve")
_JSON_TYPES = ("application/json", "application/x-ndjson", "application/ndjson", "application/jsonlines",
               "application/json-seq", "text/plain", "application/x-www-form-urlencoded", "")  # the last two: curl -d


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


async def _read_limited(request: Request, limit: int) -> bytes:
    cl = request.headers.get("content-length")
    if cl is not None:
        if not cl.isdigit():
            raise BadRequest(400, f"bad Content-Length {cl!r}")
        if int(cl) > limit:
            raise BadRequest(413, f"body of {int(cl)} bytes exceeds the limit of {limit} bytes (serve.max_body_bytes)")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(413, f"body exceeds the limit of {limit} bytes (serve.max_body_bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


def build_app(svc: DetectorService, token: str | None = None) -> Starlette:
    """The ASGI app around one :class:`DetectorService`."""
    want = f"Bearer {token}".encode() if token else None

    def authorized(request: Request) -> bool:
        if want is None:
            return True
        got = request.headers.get("authorization", "").encode()
        return hmac.compare_digest(got, want)

    def denied() -> Response:
        svc.metrics.count("rejected_unauthorized")
        return JSONResponse({"error": "missing or wrong bearer token (Authorization: Bearer ...)"}, status_code=401,
                            headers={"WWW-Authenticate": "Bearer"})

    async def samples(request: Request) -> Response:
        if not authorized(request):
            return denied()
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in _JSON_TYPES:
            svc.metrics.count("rejected_bad_request")
            return JSONResponse({"error": f"unsupported Content-Type {ctype!r}; send application/json or application/x-ndjson"},
                                status_code=415)
        try:
            body = await _read_limited(request, svc.cfg.max_body_bytes)
            items = parse_body(body, ctype, svc.cfg.max_samples_per_request)
        except BadRequest as exc:
            svc.metrics.count("rejected_bad_request")
            return JSONResponse({"error": exc.message, "accepted": 0}, status_code=exc.status)
        code, answer, headers = svc.ingest(items)
        return JSONResponse(answer, status_code=code, headers=headers)

    async def status(request: Request) -> Response:
        if not authorized(request):
            return denied()
        try:
            limit = int(request.query_params.get("limit", "1000"))
        except ValueError:
            return JSONResponse({"error": "limit must be an integer"}, status_code=400)
        return JSONResponse(svc.status(limit))

    async def reload(request: Request) -> Response:
        if not authorized(request):
            return denied()
        from starlette.concurrency import run_in_threadpool

        versions = await run_in_threadpool(svc.reload_models)
        return JSONResponse({"versions": versions})

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        w = svc._worker
        if w is None or not w.is_alive():
            return PlainTextResponse("scoring worker not running\n", status_code=503)
        return PlainTextResponse("ok\n")

    async def readyz(request: Request) -> Response:
        ok, reasons = svc.ready()
        why = svc.models_ready()[1]
        return JSONResponse({"ready": ok, "reasons": reasons, "models": why}, status_code=200 if ok else 503)

    routes = [
        Route("/v1/samples", samples, methods=["POST"]),
        Route("/v1/status", status, methods=["GET"]),
        Route("/v1/reload", reload, methods=["POST"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
    ]
    return Starlette(routes=routes)
