"""Request bodies -> validated samples, and the bounded queue in front of the scoring worker.

A body is one JSON object (a sample), a JSON array of objects, or NDJSON (one object per
line; ``Content-Type: application/x-ndjson`` or any body that is not one JSON document).
Field names are those of :data:`ocad_detectors.samples.SAMPLE_FIELDS` (what ``ocad-detect``
reads), values are checked by :func:`ocad_detectors.samples.validate_sample`, so a sample
the HTTP layer accepts is one the pipeline can score. ``input_error`` is reader-internal and
refused here like any unknown field.

The queue is all-or-nothing per request: either every valid sample of a request is accepted
or none is (then the answer is 429 and the client retries the whole request), so a client
never has to work out which half of a batch got in.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from ocad_detectors.samples import validate_sample

__all__ = ["BadRequest", "Parsed", "SampleQueue", "parse_body", "validate_items"]

_ALLOWED = ("timestamp_ms", "endpoint_id", "udp_echo_rtt_ms", "ecpri_ow_us", "lbm_rtt_ms", "lbm_success")


class BadRequest(Exception):
    """The whole request is refused: HTTP ``status`` with a message naming the problem."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Parsed:
    """Valid samples (mappings) and per-item rejections ``{"index", "status", "error"}``."""

    samples: list[dict[str, Any]] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    total: int = 0


class _LineError:
    __slots__ = ("msg",)

    def __init__(self, msg: str) -> None:
        self.msg = msg


def parse_body(body: bytes, content_type: str = "", max_items: int = 50_000) -> list[Any]:
    """Items of a request body (objects, or :class:`_LineError` for a bad NDJSON line)."""
    if not body.strip():
        raise BadRequest(400, "empty body: send a JSON sample, a JSON array of samples or NDJSON")
    ndjson = "ndjson" in content_type or "jsonlines" in content_type or "json-seq" in content_type
    items: list[Any]
    if not ndjson:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            if b"\n" not in body.strip():
                raise BadRequest(400, f"malformed JSON: {exc}") from None
            ndjson = True
        else:
            if isinstance(doc, list):
                items = doc
            elif isinstance(doc, dict):
                items = [doc]
            else:
                raise BadRequest(400, f"expected a JSON object, an array of objects or NDJSON; got a JSON {type(doc).__name__}")
    if ndjson:
        items = []
        for i, line in enumerate(body.split(b"\n")):
            line = line.strip()
            if not line:
                continue
            try:
                items.append(orjson.loads(line))
            except orjson.JSONDecodeError as exc:
                items.append(_LineError(f"line {i + 1}: malformed JSON: {exc}"))
            if len(items) > max_items:
                break
        if items and all(isinstance(x, _LineError) for x in items) and len(items) == 1:
            raise BadRequest(400, items[0].msg)
    if len(items) > max_items:
        raise BadRequest(413, f"{len(items) if not ndjson else 'more than ' + str(max_items)} samples in one request; "
                              f"the limit is {max_items} (serve.max_samples_per_request)")
    return items


def validate_items(
    items: list[Any], owner: Callable[[str], int | None] | None = None, owner_url: Callable[[int], str | None] | None = None
) -> Parsed:
    """Check every item; ``owner(endpoint_id)`` returns the owning shard when it is not this one,
    ``owner_url(shard)`` where it listens (if known)."""
    out = Parsed(total=len(items))
    for i, it in enumerate(items):
        if isinstance(it, _LineError):
            out.rejected.append({"index": i, "status": "invalid", "error": it.msg})
            continue
        if not isinstance(it, dict):
            out.rejected.append({"index": i, "status": "invalid", "error": f"expected a JSON object, got {type(it).__name__}"})
            continue
        if "input_error" in it:
            out.rejected.append({"index": i, "status": "invalid", "error": f"unknown field(s) 'input_error'; a sample has {', '.join(_ALLOWED)}"})
            continue
        vals, _, ep, err = validate_sample(it)
        if vals is None:
            out.rejected.append({"index": i, "status": "invalid", "error": err, **({"endpoint_id": ep} if ep else {})})
            continue
        if owner is not None:
            shard = owner(vals[1])
            if shard is not None:
                url = owner_url(shard) if owner_url is not None else None
                out.rejected.append({"index": i, "status": "wrong_shard", "shard": shard, "endpoint_id": vals[1],
                                     "error": f"endpoint {vals[1]!r} belongs to shard {shard}" + (f" ({url})" if url else ""),
                                     **({"owner_url": url} if url else {})})
                continue
        out.samples.append(it)
        out.indices.append(i)
    return out


class SampleQueue:
    """Bounded FIFO of ``(sample, arrival perf_counter)`` between HTTP handlers and the worker."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._q: deque[tuple[Any, float]] = deque()
        self._cv = threading.Condition()
        self.accepted = 0
        self.done = 0
        self.closed = False

    def __len__(self) -> int:
        return len(self._q)

    def put_many(self, samples: list[Any]) -> bool:
        """Enqueue all or nothing; False when they do not fit (or the queue is closed)."""
        t = time.perf_counter()
        with self._cv:
            if self.closed or len(self._q) + len(samples) > self.capacity:
                return False
            self._q.extend([(s, t) for s in samples])
            self.accepted += len(samples)
            self._cv.notify()
        return True

    def get_batch(self, n: int, timeout: float) -> list[tuple[Any, float]]:
        with self._cv:
            if not self._q:
                self._cv.wait(timeout)
            q = self._q
            k = min(n, len(q))
            return [q.popleft() for _ in range(k)]

    def mark_done(self, n: int) -> None:
        with self._cv:
            self.done += n
            self._cv.notify_all()

    def close(self) -> None:
        with self._cv:
            self.closed = True
            self._cv.notify_all()

    def wait_drained(self, timeout: float) -> bool:
        """Until every accepted sample is scored (True) or ``timeout`` seconds pass."""
        end = time.monotonic() + timeout
        with self._cv:
            while self.done < self.accepted:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(min(left, 0.1))
        return True
