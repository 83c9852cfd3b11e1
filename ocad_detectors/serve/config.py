"""Service settings: the ``serve:`` section of the same YAML file that holds ``detection:``.

``detection:`` is handed unchanged to :meth:`DetectionConfig.from_dict`; ``serve:`` is read
here. Unknown keys are errors, like everywhere else in OCAD. Every key with its default::

    serve:
      listen: 127.0.0.1:8080          # host:port; anything but loopback needs a bearer token
      token_env: OCAD_SERVE_TOKEN     # environment variable holding the bearer token
      queue_size: 200000              # samples accepted but not yet scored (then 429)
      max_body_bytes: 8388608         # request body limit (then 413)
      max_samples_per_request: 50000
      batch_max: 2048                 # samples the scoring worker drains at once
      snapshot_path: null             # state file written on shutdown, read on start
      snapshot_every_s: 0             # also write it periodically (0: only on shutdown)
      drain_timeout_s: 30             # SIGTERM: time allowed to score and deliver the rest
      reload_check_s: 5               # poll the registry for promotions (off the hot path)
      require_models: true            # /readyz false until models load (false: rules-only is fine)
      evict_idle_after_s: 0           # forget endpoints silent this long (sample time; 0: never)
      endpoint_roles: {}              # endpoint_id -> o-ru / o-du / transport (default: from the name)
      metrics: {max_endpoints: 1000}  # per-endpoint series exported at most
      shard: {count: 1, index: 0}     # index: an int or "auto" (ordinal at the end of $HOSTNAME);
                                      # peer_url: "http://ocad-serve-{index}.ocad-serve:8080" names the owner
      alerts:
        alertmanager_url: null        # e.g. http://127.0.0.1:9093 (POST /api/v2/alerts)
        webhook_url: null             # generic JSON webhook
        jsonl_path: null              # one JSON event per line
        resend_interval_s: 60         # re-send firing alerts to Alertmanager this often
        ends_at_grace_s: 300          # endsAt = now + this while firing (a dead OCAD resolves)
        generator_url: null           # default: http://<listen>/v1/status
        max_attempts: 6               # delivery retries (exponential backoff)
        backoff_initial_s: 0.2
        backoff_max_s: 10
        timeout_s: 5
        queue_size: 10000             # undelivered events kept per sink (oldest dropped, counted)
      pull:                           # optional: read the signals from Prometheus
        url: null                     # e.g. http://127.0.0.1:9090
        interval_s: 5
        timeout_s: 5
        endpoint_label: instance      # label naming the endpoint in the query results
        queries: {}                   # signal -> PromQL, or {query: PromQL, scale: factor}
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ocad_detectors.config import DetectionConfig
from ocad_detectors.samples import SIGNAL_ORDER

__all__ = ["AlertSinkConfig", "PullConfig", "ServeConfig", "ShardConfig", "load_service_config", "parse_listen"]


def _keys(section: str, d: Any, allowed: list[str]) -> Mapping[str, Any]:
    if d is None:
        return {}
    if not isinstance(d, Mapping):
        raise ValueError(f"{section}: expected a mapping, got {type(d).__name__}")
    unknown = sorted(str(k) for k in d if k not in allowed)
    if unknown:
        raise ValueError(f"{section}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    return d


def _typed(section: str, cls: type, d: Any) -> Any:
    """Build a flat dataclass from a mapping, checking keys and the type of each value."""
    names = [f.name for f in fields(cls)]
    d = _keys(section, d, names)
    kw: dict[str, Any] = {}
    defaults = cls()
    for k, v in d.items():
        dv = getattr(defaults, k)
        if isinstance(dv, bool):
            ok = isinstance(v, bool)
        elif isinstance(dv, (int, float)):
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
            if ok and isinstance(dv, int) and not isinstance(v, int):
                ok = False
        elif isinstance(dv, dict):
            ok = isinstance(v, Mapping)
            v = dict(v) if ok else v
        else:  # optional strings
            ok = v is None or isinstance(v, str)
        if not ok:
            raise ValueError(f"{section}.{k}: bad value {v!r} (default {dv!r})")
        kw[k] = v
    return cls(**kw)


@dataclass(frozen=True)
class AlertSinkConfig:
    alertmanager_url: str | None = None
    webhook_url: str | None = None
    jsonl_path: str | None = None
    resend_interval_s: float = 60.0
    ends_at_grace_s: float = 300.0
    generator_url: str | None = None
    max_attempts: int = 6
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 10.0
    timeout_s: float = 5.0
    queue_size: int = 10_000


@dataclass(frozen=True)
class PullConfig:
    url: str | None = None
    interval_s: float = 5.0
    timeout_s: float = 5.0
    endpoint_label: str = "instance"
    queries: dict[str, Any] = field(default_factory=dict)

    def signal_queries(self) -> dict[str, tuple[str, float]]:
        """signal -> (PromQL, scale factor), validated."""
        out = {}
        for sig, q in self.queries.items():
            if sig not in SIGNAL_ORDER:
                raise ValueError(f"serve.pull.queries: unknown signal {sig!r}; signals are {list(SIGNAL_ORDER)}")
            if isinstance(q, str):
                out[sig] = (q, 1.0)
            else:
                q = _keys(f"serve.pull.queries.{sig}", q, ["query", "scale"])
                if not isinstance(q.get("query"), str):
                    raise ValueError(f"serve.pull.queries.{sig}: 'query' (PromQL text) is required")
                scale = q.get("scale", 1.0)
                if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale <= 0:
                    raise ValueError(f"serve.pull.queries.{sig}.scale: expected a positive number, got {scale!r}")
                out[sig] = (q["query"], float(scale))
        return out


@dataclass(frozen=True)
class ShardConfig:
    count: int = 1
    index: int = 0
    #: where the other shards listen, ``{index}`` replaced, e.g. a StatefulSet's stable names
    #: ``http://ocad-serve-{index}.ocad-serve:8080``; named in wrong-shard refusals
    peer_url: str | None = None

    def url_of(self, index: int) -> str | None:
        return self.peer_url.replace("{index}", str(index)) if self.peer_url else None


@dataclass(frozen=True)
class _ScalarServe:
    """The flat settings of the ``serve:`` section (typed and checked by ``_typed``)."""

    listen: str = "127.0.0.1:8080"
    token_env: str = "OCAD_SERVE_TOKEN"
    queue_size: int = 200_000
    max_body_bytes: int = 8 * 1024 * 1024
    max_samples_per_request: int = 50_000
    batch_max: int = 2048
    snapshot_path: str | None = None
    snapshot_every_s: float = 0.0
    drain_timeout_s: float = 30.0
    reload_check_s: float = 5.0
    require_models: bool = True
    evict_idle_after_s: float = 0.0
    endpoint_roles: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ServeConfig(_ScalarServe):
    max_endpoints_metrics: int = 1000
    shard: ShardConfig = field(default_factory=ShardConfig)
    alerts: AlertSinkConfig = field(default_factory=AlertSinkConfig)
    pull: PullConfig = field(default_factory=PullConfig)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> ServeConfig:
        d = dict(_keys("serve", d, [f.name for f in fields(cls) if f.name != "max_endpoints_metrics"] + ["metrics"]))
        flat = {k: v for k, v in d.items() if k not in ("shard", "alerts", "pull", "metrics")}

        base = _typed("serve", _ScalarServe, flat)
        m = _keys("serve.metrics", d.get("metrics"), ["max_endpoints"])
        max_ep = m.get("max_endpoints", 1000)
        if isinstance(max_ep, bool) or not isinstance(max_ep, int) or max_ep < 0:
            raise ValueError(f"serve.metrics.max_endpoints: expected an integer >= 0, got {max_ep!r}")
        shard = _shard(d.get("shard"))
        for eid, role in base.endpoint_roles.items():
            if role not in ("o-ru", "o-du", "transport"):
                raise ValueError(f"serve.endpoint_roles.{eid}: expected o-ru, o-du or transport, got {role!r}")
        for k in ("queue_size", "batch_max", "max_body_bytes", "max_samples_per_request"):
            if getattr(base, k) < 1:
                raise ValueError(f"serve.{k}: must be >= 1")
        pull = _typed("serve.pull", PullConfig, d.get("pull"))
        pull.signal_queries()
        parse_listen(base.listen)
        return cls(**{f.name: getattr(base, f.name) for f in fields(_ScalarServe)}, max_endpoints_metrics=max_ep,
                   shard=shard, alerts=_typed("serve.alerts", AlertSinkConfig, d.get("alerts")), pull=pull)


def _shard(d: Any) -> ShardConfig:
    d = _keys("serve.shard", d, ["count", "index", "peer_url"])
    count = d.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"serve.shard.count: expected an integer >= 1, got {count!r}")
    index = d.get("index", 0)
    if index == "auto":  # Kubernetes StatefulSet: pod ocad-serve-3 -> 3
        host = os.environ.get("HOSTNAME", "")
        m = re.search(r"-(\d+)$", host)
        if not m:
            raise ValueError(f"serve.shard.index: 'auto' needs $HOSTNAME ending in -<ordinal>, got {host!r}")
        index = int(m.group(1))
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
        raise ValueError(f"serve.shard.index: expected an integer in [0, {count}), got {index!r}")
    peer = d.get("peer_url")
    if peer is not None and (not isinstance(peer, str) or "{index}" not in peer):
        raise ValueError(f"serve.shard.peer_url: expected a URL containing {{index}}, got {peer!r}")
    return ShardConfig(count, index, peer)


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) -> (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"listen: expected host:port, got {listen!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_service_config(path: str | os.PathLike[str]) -> tuple[DetectionConfig, ServeConfig]:
    """Read one YAML file: (``detection:`` as DetectionConfig, ``serve:`` as ServeConfig)."""
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ValueError(f"cannot read config {p}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{p}: not valid YAML: {exc}") from None
    raw = _keys(f"{p} (top level)", raw, ["detection", "serve"])
    try:
        det = DetectionConfig.from_dict(raw.get("detection") or {})
        srv = ServeConfig.from_dict(raw.get("serve"))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{p}: {exc}") from None
    return det, srv
