"""A seeded simulator of O-RAN endpoints and their CFM-lite measurements.

Healthy series are deliberately *not* i.i.d. (see shared/docs/DOMAIN.md): each endpoint has
its own baseline, a daily load cycle, AR(1) noise with a component shared by all signals of the
endpoint (queues drain slowly, signals on one path move together), white measurement jitter,
and rare benign jitter spikes and
isolated lost probes that are not labelled as anomalies. On top of that, incident *episodes*
(spike, drift, loss, concurrent, correlated) are injected with a start, an end and a severity;
a drift may end in an outage (all probes fail) so that lead time can be measured.

Same :class:`SimulatorConfig` -> identical frames (and byte-identical parquet files).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pandas as pd
from scipy.signal import lfilter

from ocad_detectors.features import capability_key
from ocad_detectors.signals import METRIC_SIGNAL, VALUE_SIGNALS

ANOMALY_TYPES: tuple[str, ...] = ("spike", "drift", "loss", "concurrent", "correlated")
SEVERITIES: tuple[str, ...] = ("minor", "major", "critical")
_SEVERITY_SCALE = {"minor": 0.7, "major": 1.0, "critical": 1.5}
_SEVERITY_P = (0.4, 0.4, 0.2)

# Healthy baseline ranges per role and signal (signal unit), see DOMAIN.md's table.
_BASE_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "o-ru": {"udp_echo_rtt_ms": (3.0, 8.0), "ecpri_ow_us": (80.0, 200.0), "lbm_rtt_ms": (4.0, 15.0)},
    "o-du": {"udp_echo_rtt_ms": (2.0, 6.0), "ecpri_ow_us": (50.0, 150.0), "lbm_rtt_ms": (2.0, 10.0)},
    "transport": {"udp_echo_rtt_ms": (2.0, 5.0), "ecpri_ow_us": (50.0, 120.0), "lbm_rtt_ms": (1.5, 8.0)},
}
# Absolute incident magnitudes per signal (signal unit) before the severity factor.
_SPIKE = {"udp_echo_rtt_ms": (10.0, 25.0), "ecpri_ow_us": (150.0, 400.0), "lbm_rtt_ms": (10.0, 25.0)}
_DRIFT = {"udp_echo_rtt_ms": (5.0, 20.0), "ecpri_ow_us": (100.0, 300.0), "lbm_rtt_ms": (5.0, 20.0)}
_CORRELATED_ECPRI_US = (60.0, 200.0)
_CONCURRENT_SIGMAS = (5.0, 10.0)  # per signal, in units of the endpoint's healthy noise std

# Episode durations in minutes (low, high).
_DURATION_MIN = {"spike": (0.5, 5.0), "drift": (10.0, 40.0), "loss": (1.0, 10.0), "concurrent": (2.0, 15.0), "correlated": (5.0, 20.0)}
_OUTAGE_MIN = (2.0, 10.0)


@dataclass(frozen=True)
class SimulatorConfig:
    """Everything that decides the simulated data. Same config -> same data."""

    n_oru: int = 4
    n_odu: int = 4
    n_transport: int = 4
    duration_hours: float = 48.0
    interval_s: float = 5.0
    start: str = "2026-01-05T00:00:00+00:00"
    incidents_per_endpoint_day: float = 9.0
    incident_mix: dict[str, float] = field(
        default_factory=lambda: {"spike": 0.25, "drift": 0.25, "loss": 0.15, "concurrent": 0.2, "correlated": 0.15}
    )
    drift_outage_probability: float = 0.6
    min_gap_minutes: float = 10.0  # quiet time between two incidents of one endpoint
    seed: int = 42

    def __post_init__(self) -> None:
        if self.n_oru + self.n_odu + self.n_transport < 1:
            raise ValueError("the simulator needs at least one endpoint")
        if min(self.n_oru, self.n_odu, self.n_transport) < 0:
            raise ValueError("endpoint counts must be >= 0")
        if self.duration_hours <= 0 or self.interval_s <= 0:
            raise ValueError("duration_hours and interval_s must be positive")
        unknown = set(self.incident_mix) - set(ANOMALY_TYPES)
        if unknown:
            raise ValueError(f"unknown incident types in incident_mix: {sorted(unknown)}; known: {ANOMALY_TYPES}")
        if any(w < 0 for w in self.incident_mix.values()) or sum(self.incident_mix.values()) <= 0:
            raise ValueError("incident_mix weights must be >= 0 with a positive sum")
        if not 0.0 <= self.drift_outage_probability <= 1.0:
            raise ValueError("drift_outage_probability must be in [0, 1]")

    @property
    def n_samples(self) -> int:
        return int(round(self.duration_hours * 3600.0 / self.interval_s))

    @property
    def start_ms(self) -> int:
        dt = datetime.fromisoformat(self.start)
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return int(round(dt.timestamp() * 1000))


@dataclass
class SimulatedData:
    samples: pd.DataFrame  # one row per (endpoint, timestamp)
    incidents: pd.DataFrame  # one row per episode
    endpoints: pd.DataFrame  # one row per endpoint: role, capabilities, baselines
    labels: pd.DataFrame  # anomaly_labels.csv in the seed's columns


def endpoint_capabilities(role: str, index: int) -> tuple[str, ...]:
    """Which probes an endpoint answers. Not every endpoint supports every signal."""
    if role == "o-ru":
        # every fourth radio unit has no UDP echo responder
        return ("ecpri", "lbm") if index % 4 == 3 else ("ecpri", "lbm", "udp_echo")
    if role == "o-du":
        return ("ecpri", "lbm", "udp_echo")
    # transport nodes carry no eCPRI; every second one answers loopback only
    return ("lbm",) if index % 2 == 1 else ("lbm", "udp_echo")


def _endpoint_list(cfg: SimulatorConfig) -> list[tuple[str, str, tuple[str, ...]]]:
    eps = []
    for role, n in (("o-ru", cfg.n_oru), ("o-du", cfg.n_odu), ("transport", cfg.n_transport)):
        for i in range(n):
            eps.append((f"{role}-{i + 1:03d}", role, endpoint_capabilities(role, i)))
    return eps


def _signals_of(caps: tuple[str, ...]) -> list[str]:
    return [METRIC_SIGNAL[c] for c in ("udp_echo", "ecpri", "lbm") if c in caps]


def _feasible_types(caps: tuple[str, ...]) -> list[str]:
    types = ["spike", "drift", "loss"]
    if len(_signals_of(caps)) >= 2:
        types.append("concurrent")
    if "ecpri" in caps and "udp_echo" in caps:
        types.append("correlated")
    return types


def _ar1(rng: np.random.Generator, n: int, phi: float, std: float) -> np.ndarray:
    """Stationary AR(1) with the given marginal std (the first value is drawn stationary)."""
    eps = rng.normal(0.0, std * np.sqrt(1.0 - phi * phi), n)
    eps[0] = rng.normal(0.0, std)
    return lfilter([1.0], [1.0, -phi], eps)


def _simulate_endpoint(cfg: SimulatorConfig, seed: np.random.SeedSequence, endpoint_id: str, role: str, caps: tuple[str, ...]):
    rng = np.random.default_rng(seed)
    n = cfg.n_samples
    dt = cfg.interval_s
    t_s = np.arange(n) * dt
    hours = ((cfg.start_ms / 1000.0 + t_s) / 3600.0) % 24.0
    # daily load: a smooth bump peaking in the afternoon busy hour
    load = 0.5 * (1.0 - np.cos(2.0 * np.pi * (hours - 4.0) / 24.0))
    load_amp = rng.uniform(0.03, 0.06)
    phi = rng.uniform(0.85, 0.95)
    shared = _ar1(rng, n, phi, 1.0)  # path-level noise, shared by the endpoint's signals
    sigs = _signals_of(caps)

    values: dict[str, np.ndarray] = {}
    base: dict[str, float] = {}
    noise_std: dict[str, float] = {}
    for s in VALUE_SIGNALS:
        lo, hi = _BASE_RANGES[role][s]
        b = rng.uniform(lo, hi)
        sd = b * rng.uniform(0.03, 0.05)
        own = _ar1(rng, n, rng.uniform(0.8, 0.95), 1.0)
        # queueing delay (autocorrelated, partly shared along the path) plus white timestamping
        # jitter of the probe itself; var ~= sd^2. The jitter makes the last value a noisy
        # forecast: a model that smooths over the window beats it, as on real probes.
        noise = sd * (0.5 * shared + 0.6 * own + 0.6 * rng.standard_normal(n))
        jitter_on = rng.random(n) < 0.003
        jitter = np.where(jitter_on, rng.exponential(1.5 * sd, n), 0.0)
        v = b * (1.0 + load_amp * load) + noise + jitter
        lost = rng.random(n) < (0.0005 if s == "ecpri_ow_us" else 0.001)
        v[lost] = np.nan
        if s in sigs:
            values[s] = v
            base[s] = b
            noise_std[s] = sd
    lbm_ok = (rng.random(n) >= 0.001) if "lbm" in caps else None
    if lbm_ok is not None:
        values["lbm_rtt_ms"][~lbm_ok] = np.nan

    # incidents, placed one after another so they never overlap and always end in range
    is_anom = np.zeros(n, dtype=bool)
    itype = np.full(n, None, dtype=object)
    inc_id = np.full(n, None, dtype=object)
    incidents = []
    types = _feasible_types(caps)
    w = np.array([cfg.incident_mix.get(t, 0.0) for t in types], dtype=float)
    if w.sum() <= 0:
        w = np.ones(len(types))
    w = w / w.sum()
    day_s = 86400.0
    # quiet time between incidents so that the configured rate is met on average
    mean_dur_s = 60.0 * sum(
        wi * (np.mean(_DURATION_MIN[t]) + (cfg.drift_outage_probability * np.mean(_OUTAGE_MIN) if t == "drift" else 0.0))
        for wi, t in zip(w, types)
    )
    per_incident_s = day_s / max(cfg.incidents_per_endpoint_day, 1e-9)
    mean_gap_s = max(60.0, per_incident_s - mean_dur_s - cfg.min_gap_minutes * 60.0)
    per_min = 60.0 / dt
    cursor = rng.exponential(mean_gap_s) if cfg.incidents_per_endpoint_day > 0 else np.inf
    k = 0
    while cursor < n * dt:
        typ = str(rng.choice(types, p=w))
        sev = str(rng.choice(SEVERITIES, p=_SEVERITY_P))
        scale = _SEVERITY_SCALE[sev]
        dur_min = rng.uniform(*_DURATION_MIN[typ])
        start = int(cursor / dt)
        length = max(2, int(round(dur_min * per_min)))
        outage_len = 0
        if typ == "drift" and rng.random() < cfg.drift_outage_probability:
            outage_len = max(2, int(round(rng.uniform(*_OUTAGE_MIN) * per_min)))
        end = start + length + outage_len  # exclusive
        if end > n - 1:
            break  # would not end inside the series; every incident ends
        sl = slice(start, start + length)
        ramp_up = np.minimum(1.0, (np.arange(length) + 1) / 2.0)  # reaches full level in two samples
        shape = ramp_up * np.minimum(1.0, (length - np.arange(length)) / 2.0)
        affected: list[str]
        if typ == "spike":
            target = str(rng.choice(sigs))
            affected = [target]
            values[target][sl] += rng.uniform(*_SPIKE[target]) * scale * shape
        elif typ == "drift":
            affected = list(sigs)
            ramp = np.linspace(0.0, 1.0, length)
            for s in sigs:
                values[s][sl] += rng.uniform(*_DRIFT[s]) * scale * ramp
        elif typ == "loss":
            affected = list(sigs) + (["lbm_success"] if lbm_ok is not None else [])
            p = min(0.95, rng.uniform(0.3, 0.7) * scale)
            drop = rng.random(length) < p
            for s in sigs:
                if s == "ecpri_ow_us":
                    values[s][sl][rng.random(length) < p / 2] = np.nan
                else:
                    values[s][sl][drop] = np.nan
            if lbm_ok is not None:
                lbm_ok[sl][drop] = False
        elif typ == "concurrent":
            affected = list(sigs)
            for s in sigs:
                values[s][sl] += rng.uniform(*_CONCURRENT_SIGMAS) * noise_std[s] * scale * shape
        else:  # correlated: eCPRI delay rises while UDP echo stays normal
            affected = ["ecpri_ow_us"]
            values["ecpri_ow_us"][sl] += rng.uniform(*_CORRELATED_ECPRI_US) * scale * shape
        outage_start_ms = None
        if outage_len:
            osl = slice(start + length, end)
            for s in sigs:
                values[s][osl] = np.nan
            if lbm_ok is not None:
                lbm_ok[osl] = False
                affected = affected + ["lbm_success"]
            outage_start_ms = cfg.start_ms + int(round((start + length) * dt * 1000))
        k += 1
        iid = f"{endpoint_id}#{k:03d}"
        is_anom[start:end] = True
        itype[start:end] = typ
        inc_id[start:end] = iid
        incidents.append(
            {
                "incident_id": iid,
                "endpoint_id": endpoint_id,
                "start": cfg.start_ms + int(round(start * dt * 1000)),
                "end": cfg.start_ms + int(round(end * dt * 1000)),  # exclusive: first healthy sample
                "type": typ,
                "severity": sev,
                "outage_start": outage_start_ms,
                "signals": ",".join(affected),
            }
        )
        cursor = end * dt + cfg.min_gap_minutes * 60.0 + rng.exponential(mean_gap_s)

    # delays can't be negative; physical floor at 1 % of baseline
    for s in sigs:
        np.maximum(values[s], 0.01 * base[s], out=values[s])

    ts = cfg.start_ms + np.round(t_s * 1000).astype(np.int64)
    frame = {
        "timestamp_ms": ts,
        "endpoint_id": np.full(n, endpoint_id, dtype=object),
    }
    for s in VALUE_SIGNALS:
        frame[s] = values.get(s, np.full(n, np.nan))
    succ = pd.array(lbm_ok, dtype="boolean") if lbm_ok is not None else pd.array([pd.NA] * n, dtype="boolean")
    frame["lbm_success"] = succ
    frame["is_anomaly"] = is_anom
    frame["anomaly_type"] = pd.array(itype, dtype="string")
    frame["incident_id"] = pd.array(inc_id, dtype="string")
    ep_row = {"endpoint_id": endpoint_id, "role": role, "capabilities": capability_key(caps)}
    for s in VALUE_SIGNALS:
        ep_row[f"{s}_base"] = base.get(s, np.nan)
        ep_row[f"{s}_noise_std"] = noise_std.get(s, np.nan)
    return pd.DataFrame(frame), incidents, ep_row


def _labels(samples: pd.DataFrame, incidents: pd.DataFrame) -> pd.DataFrame:
    """anomaly_labels.csv: one row per anomalous sample, in the seed's columns."""
    anom = samples.loc[samples["is_anomaly"], ["endpoint_id", "timestamp_ms", "is_anomaly", "anomaly_type", "incident_id"]]
    inc = incidents.set_index("incident_id")
    lab = anom.join(inc[["severity", "signals", "outage_start"]], on="incident_id")
    in_outage = lab["outage_start"].notna() & (lab["timestamp_ms"] >= lab["outage_start"])
    desc = lab["anomaly_type"].astype(str) + " on " + lab["signals"].astype(str)
    desc = desc.where(~in_outage, "outage after drift: all probes fail")
    return pd.DataFrame(
        {
            "endpoint_id": lab["endpoint_id"].astype(str).to_numpy(),
            "timestamp_ms": lab["timestamp_ms"].to_numpy(np.int64),
            "is_anomaly": True,
            "anomaly_type": lab["anomaly_type"].astype(str).to_numpy(),
            "severity": lab["severity"].astype(str).to_numpy(),
            "description": desc.to_numpy(),
        }
    )


def simulate(cfg: SimulatorConfig) -> SimulatedData:
    """Generate samples, incidents, endpoints and labels for the configured fleet."""
    eps = _endpoint_list(cfg)
    seeds = np.random.SeedSequence(cfg.seed).spawn(len(eps))
    frames, incs, rows = [], [], []
    for ss, (eid, role, caps) in zip(seeds, eps):
        f, inc, row = _simulate_endpoint(cfg, ss, eid, role, caps)
        frames.append(f)
        incs += inc
        rows.append(row)
    samples = pd.concat(frames, ignore_index=True).sort_values(["timestamp_ms", "endpoint_id"], kind="stable")
    samples = samples.reset_index(drop=True)
    inc_cols = ["incident_id", "endpoint_id", "start", "end", "type", "severity", "outage_start", "signals"]
    incidents = pd.DataFrame(incs, columns=inc_cols)
    incidents["start"] = incidents["start"].astype("int64")
    incidents["end"] = incidents["end"].astype("int64")
    incidents["outage_start"] = incidents["outage_start"].astype("Int64")
    for c in ("incident_id", "endpoint_id", "type", "severity", "signals"):
        incidents[c] = incidents[c].astype("string")
    incidents = incidents.sort_values(["start", "endpoint_id"], kind="stable").reset_index(drop=True)
    endpoints = pd.DataFrame(rows)
    return SimulatedData(samples=samples, incidents=incidents, endpoints=endpoints, labels=_labels(samples, incidents))
