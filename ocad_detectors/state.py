"""Per-endpoint detector state as plain JSON-able data (no pickle), for service restarts.

:func:`export_state` walks every endpoint of a :class:`~ocad_detectors.pipeline.DetectionPipeline`
and its state objects (``rule``, ``cp``, ``res``, ``mv``, ``alert``) **generically over their
``__slots__``**, so a slot added to a state class later is saved and restored without touching
this module. Values are encoded with a few tags (JSON has no NaN, tuple, deque or set)::

    float NaN/inf   {"$f": "nan" | "inf" | "-inf"}
    tuple           {"$t": [...]}
    deque           {"$dq": [...], "maxlen": n}
    frozenset/set   {"$fs": [...]}  /  {"$set": [...]}
    dict            {"$d": [[key, value], ...]}   (keys may be non-strings)
    numpy array     {"$nd": [...], "dtype": "float64", "shape": [..]}
    object with __slots__   {"$obj": {slot: value, ...}}   (nested state, e.g. a level-shift
                    state per signal inside the change-point state)

Slots holding objects that are *derived* from the models (the Isolation Forest group row, the
reference statistics cached in a CUSUM state, residual scales) are not trusted from the file:
after a restore every state goes through the detectors' ``refresh_state`` exactly as after a
model reload, which recomputes them for the models now in service. Objects of other types
are skipped on export (and keep their fresh default on import). Nested slot objects are
restored *into* the fresh default object at the same place (its class comes from the running
code, never from the file), element by element for lists of them.

:func:`import_state` builds each endpoint with the pipeline's own constructor (so every slot
has its current default) and then overwrites the slots found in the data; unknown slots in
the data are ignored, missing ones keep the default. A malformed payload raises
``ValueError`` naming the endpoint and slot, and leaves the pipeline unchanged.
"""

from __future__ import annotations

import math
from array import array
from collections import deque
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ocad_detectors.pipeline import DetectionPipeline

__all__ = ["STATE_FORMAT", "export_state", "import_state"]

#: version of the exported structure (bump when the meaning of a slot changes incompatibly)
STATE_FORMAT = 1
#: sub-state attributes of a pipeline endpoint, and which detector refreshes them
_SUBSTATES = ("rule", "cp", "res", "mv", "alert")
#: endpoint attributes restored from the data (id is the key; the sub-states are above)
_ENDPOINT_SCALARS = ("last_ts", "caps", "fixed")
#: slots recomputed from the models after a restore; never read from a file
_DERIVED = {"cp": {"refs"}, "res": {"scale", "thr"}, "mv": {"row", "ready"}}


def _slots(obj: Any) -> list[str]:
    out: list[str] = []
    for cls in type(obj).__mro__:
        s = cls.__dict__.get("__slots__", ())
        out += [s] if isinstance(s, str) else list(s)
    return [s for s in out if s not in ("__dict__", "__weakref__")]


class _Skip(Exception):
    """A value of a type this module does not encode (a derived object)."""


_ARRAY_CODES = ("d", "q")  # compact float / int64 buffers (the level-shift detector's samples)


def _enc(v: Any) -> Any:
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, (int, np.integer)) and not isinstance(v, np.bool_):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if math.isfinite(f):
            return f
        return {"$f": "nan" if f != f else ("inf" if f > 0 else "-inf")}
    if isinstance(v, deque):
        return {"$dq": [_enc(x) for x in v], "maxlen": v.maxlen}
    if isinstance(v, array):
        if v.typecode not in _ARRAY_CODES:
            raise _Skip
        return {"$a": [_enc(x) for x in v], "typecode": v.typecode}
    if isinstance(v, tuple):
        return {"$t": [_enc(x) for x in v]}
    if isinstance(v, list):
        return [_enc(x) for x in v]
    if isinstance(v, frozenset):
        return {"$fs": sorted((_enc(x) for x in v), key=repr)}
    if isinstance(v, set):
        return {"$set": sorted((_enc(x) for x in v), key=repr)}
    if isinstance(v, dict):
        return {"$d": [[_enc(k), _enc(x)] for k, x in v.items()]}
    if isinstance(v, np.ndarray):
        if v.dtype.kind not in "fiub":
            raise _Skip
        return {"$nd": [_enc(x) for x in v.ravel().tolist()], "dtype": str(v.dtype), "shape": list(v.shape)}
    if _slots(v) and type(v).__module__.startswith("ocad_detectors."):
        return {"$obj": {name: _enc(getattr(v, name)) for name in _slots(v) if hasattr(v, name)}}
    raise _Skip


def _dec(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, list):
        return [_dec(x) for x in v]
    if isinstance(v, dict):
        if "$f" in v:
            return {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}[v["$f"]]
        if "$dq" in v:
            ml = v.get("maxlen")
            if ml is not None and (not isinstance(ml, int) or ml < 0):
                raise ValueError(f"bad deque maxlen {ml!r}")
            return deque((_dec(x) for x in v["$dq"]), maxlen=ml)
        if "$t" in v:
            return tuple(_dec(x) for x in v["$t"])
        if "$a" in v:
            if v.get("typecode") not in _ARRAY_CODES:
                raise ValueError(f"bad array typecode {v.get('typecode')!r}")
            return array(v["typecode"], (_dec(x) for x in v["$a"]))
        if "$fs" in v:
            return frozenset(_dec(x) for x in v["$fs"])
        if "$set" in v:
            return {_dec(x) for x in v["$set"]}
        if "$d" in v:
            return {_dec(k): _dec(x) for k, x in v["$d"]}
        if "$nd" in v:
            return np.array([_dec(x) for x in v["$nd"]], dtype=np.dtype(v["dtype"])).reshape(v["shape"])
    raise ValueError(f"cannot decode {type(v).__name__} {str(v)[:60]}")


def _dec_into(default: Any, v: Any) -> Any:
    """Decode ``v`` using ``default`` (the fresh value at that place) as the template for
    nested slot objects; everything else as :func:`_dec`."""
    if isinstance(v, dict) and "$obj" in v:
        if default is None or not _slots(default):
            raise ValueError(f"a nested state object where {type(default).__name__} is expected")
        names = set(_slots(default))
        for name, raw in v["$obj"].items():
            if name in names:
                cur = getattr(default, name, None)
                val = _dec_into(cur, raw)
                if not _same_kind(cur, val):
                    raise ValueError(f"{type(default).__name__}.{name}: expected {type(cur).__name__}, got {type(val).__name__}")
                setattr(default, name, val)
        return default
    if isinstance(v, list) and isinstance(default, list) and any(_slots(x) for x in default):
        return [_dec_into(default[i] if i < len(default) else None, x) for i, x in enumerate(v)]
    return _dec(v)


def _export_obj(obj: Any, kind: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    skip = _DERIVED.get(kind, set())
    for name in _slots(obj):
        if name in skip or not hasattr(obj, name):
            continue
        try:
            out[name] = _enc(getattr(obj, name))
        except _Skip:
            continue
    return out


def export_state(pipe: DetectionPipeline) -> dict[str, Any]:
    """Every endpoint's detector state as JSON-able data (``{"format": 1, "endpoints": {...}}``)."""
    with pipe._lock:
        eps: dict[str, Any] = {}
        for eid, e in pipe._endpoints.items():
            d: dict[str, Any] = {k: _enc(getattr(e, k, None)) for k in _ENDPOINT_SCALARS}
            for sub in _SUBSTATES:
                if hasattr(e, sub):
                    d[sub] = _export_obj(getattr(e, sub), sub)
            eps[eid] = d
        return {"format": STATE_FORMAT, "endpoints": eps}


def _same_kind(default: Any, value: Any) -> bool:
    """Loose type check: a restored slot must have the shape its fresh default has."""
    if default is None or value is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    for t in (deque, array, dict, list, tuple, str, frozenset, set, np.ndarray):
        if isinstance(default, t):
            return isinstance(value, t)
    return True


def import_state(pipe: DetectionPipeline, data: dict[str, Any], keep: Any = None) -> list[str]:
    """Restore endpoints exported by :func:`export_state` into ``pipe`` (replacing their state).

    ``keep(endpoint_id) -> bool`` filters endpoints (e.g. only this shard's). Returns the
    restored endpoint ids. Raises ``ValueError`` on a malformed payload (nothing is changed).
    """
    if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
        raise ValueError(f"state format {data.get('format') if isinstance(data, dict) else type(data).__name__!r}; expected {STATE_FORMAT}")
    eps = data.get("endpoints")
    if not isinstance(eps, dict):
        raise ValueError("state has no 'endpoints' mapping")
    built: dict[str, Any] = {}
    with pipe._lock:
        before = dict(pipe._endpoints)
        for eid, d in eps.items():
            if keep is not None and not keep(eid):
                continue
            if not isinstance(eid, str) or not isinstance(d, dict):
                raise ValueError(f"endpoint {eid!r}: expected a mapping")
            e = pipe._endpoint(eid)  # fresh defaults for every slot (registers it; undone on error)
            try:
                for k in _ENDPOINT_SCALARS:
                    if k in d:
                        val = _dec(d[k])
                        if k == "caps":
                            val = frozenset(val or ())
                        setattr(e, k, val)
                for sub in _SUBSTATES:
                    src = d.get(sub)
                    if src is None or not hasattr(e, sub):
                        continue
                    obj = getattr(e, sub)
                    names = set(_slots(obj)) - _DERIVED.get(sub, set())
                    for name, raw in src.items():
                        if name not in names:
                            continue
                        default = getattr(obj, name, None)
                        val = _dec_into(default, raw)
                        if not _same_kind(default, val):
                            raise ValueError(f"{sub}.{name}: expected {type(default).__name__}, got {type(val).__name__}")
                        setattr(obj, name, val)
            except (ValueError, TypeError, KeyError) as exc:
                pipe._endpoints.clear()
                pipe._endpoints.update(before)
                raise ValueError(f"endpoint {eid!r}: {exc}") from None
            built[eid] = e
        detectors = {"rule": pipe.rules, "cp": pipe.changepoint, "res": pipe.residual, "mv": pipe.multivariate}
        for e in built.values():
            for sub, det in detectors.items():  # as after a model reload: derived values recomputed
                if hasattr(det, "refresh_state") and hasattr(e, sub):
                    det.refresh_state(getattr(e, sub))
    return list(built)
