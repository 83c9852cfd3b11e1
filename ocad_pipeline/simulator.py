"""A seeded simulator of O-RAN endpoints and their CFM-lite measurements.

Two profiles (``SimulatorConfig.profile``):

``realistic`` (default): healthy behaviour as real probes show it (see shared/docs/DOMAIN.md,
"What real probe telemetry looks like"), all of it unlabelled normal: per-endpoint baselines
spread log-uniformly (fronthaul 1-10 ms, eCPRI 50-200 µs, optional WAN endpoints 70-400 ms
probed every few minutes), heavy-tailed queueing delay (shot noise: queues build in one
sample and drain slowly, partly shared by the signals of one path), isolated benign
single-sample spikes, rare isolated missing replies, benign route-change steps of a few
percent lasting hours (both directions) and an asymmetric daily load (fast morning rise,
slow evening decay). Incidents are small relative to the noise as well as large (magnitudes
in units of the endpoint's healthy noise std, by severity): ``burst``, ``step``, ``drift``
(a ramp from zero, often ending in an outage), ``loss``, ``intermittent_loss``,
``single_signal``, ``concurrent``, ``correlated`` and ``jitter`` (variance grows, mean
unchanged).

``clean``: the earlier simulator, byte-identical for the same seed: baseline, symmetric
daily cycle, Gaussian AR(1) noise, rare benign jitter spikes and lost probes, and large
incident episodes (spike, drift, loss, concurrent, correlated).

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

PROFILES: tuple[str, ...] = ("realistic", "clean")
#: incident types of the clean profile (the earlier simulator)
CLEAN_TYPES: tuple[str, ...] = ("spike", "drift", "loss", "concurrent", "correlated")
#: incident types of the realistic profile
REALISTIC_TYPES: tuple[str, ...] = (
    "burst", "step", "drift", "loss", "intermittent_loss", "single_signal", "concurrent", "correlated", "jitter",
)
#: every type either profile can produce (recorded labels may carry any other non-empty type)
ANOMALY_TYPES: tuple[str, ...] = (*CLEAN_TYPES, *(t for t in REALISTIC_TYPES if t not in CLEAN_TYPES))
PROFILE_TYPES: dict[str, tuple[str, ...]] = {"clean": CLEAN_TYPES, "realistic": REALISTIC_TYPES}
DEFAULT_MIX: dict[str, dict[str, float]] = {
    "clean": {"spike": 0.25, "drift": 0.25, "loss": 0.15, "concurrent": 0.2, "correlated": 0.15},
    "realistic": {
        "burst": 0.16, "step": 0.06, "drift": 0.14, "loss": 0.08, "intermittent_loss": 0.10,
        "single_signal": 0.12, "concurrent": 0.10, "correlated": 0.08, "jitter": 0.12,
    },
}
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
    #: incident type -> weight; empty = the profile's default mix (DEFAULT_MIX)
    incident_mix: dict[str, float] = field(default_factory=dict)
    drift_outage_probability: float = 0.6
    min_gap_minutes: float = 10.0  # quiet time between two incidents of one endpoint
    seed: int = 42
    #: "realistic" (heavy-tailed noise, benign spikes and steps, small and large incidents) or "clean"
    profile: str = "realistic"
    #: realistic profile only: Internet-like endpoints (UDP echo only, 70-400 ms baselines)
    n_wan: int = 0
    #: realistic profile only: probe interval of the WAN endpoints (RIPE Atlas-like: minutes)
    wan_interval_s: float = 240.0

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(f"unknown simulator profile {self.profile!r}; known: {PROFILES}")
        if self.n_wan < 0:
            raise ValueError("endpoint counts must be >= 0")
        if self.n_wan and self.profile != "realistic":
            raise ValueError("n_wan (WAN endpoints) needs profile='realistic'")
        if self.wan_interval_s <= 0:
            raise ValueError("wan_interval_s must be positive")
        if self.n_oru + self.n_odu + self.n_transport + self.n_wan < 1:
            raise ValueError("the simulator needs at least one endpoint")
        if min(self.n_oru, self.n_odu, self.n_transport) < 0:
            raise ValueError("endpoint counts must be >= 0")
        if self.duration_hours <= 0 or self.interval_s <= 0:
            raise ValueError("duration_hours and interval_s must be positive")
        known = PROFILE_TYPES[self.profile]
        unknown = set(self.incident_mix) - set(known)
        if unknown:
            raise ValueError(
                f"unknown incident types in incident_mix: {sorted(unknown)}; known for profile {self.profile!r}: {known}"
            )
        if self.incident_mix and (any(w < 0 for w in self.incident_mix.values()) or sum(self.incident_mix.values()) <= 0):
            raise ValueError("incident_mix weights must be >= 0 with a positive sum")
        if not 0.0 <= self.drift_outage_probability <= 1.0:
            raise ValueError("drift_outage_probability must be in [0, 1]")

    @property
    def n_samples(self) -> int:
        """Samples per fronthaul/transport endpoint (WAN endpoints: :meth:`samples_at`)."""
        return self.samples_at(self.interval_s)

    def samples_at(self, interval_s: float) -> int:
        return int(round(self.duration_hours * 3600.0 / interval_s))

    @property
    def mix(self) -> dict[str, float]:
        """The incident mix in effect: the configured one, else the profile's default."""
        return dict(self.incident_mix) if self.incident_mix else dict(DEFAULT_MIX[self.profile])

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
    #: unlabelled benign events of the realistic profile (route steps, single-sample spikes):
    #: endpoint_id, kind, start, end (exclusive), magnitude (fraction of the baseline). Lets a
    #: test or an experiment count false alerts on exactly the behaviour that must not alert.
    benign: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(BENIGN_COLUMNS)))


BENIGN_COLUMNS: tuple[str, ...] = ("endpoint_id", "kind", "start", "end", "magnitude")


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


def _realistic_endpoint_list(cfg: SimulatorConfig) -> list[tuple[str, str, tuple[str, ...], str]]:
    """(endpoint_id, role, capabilities, group); WAN endpoints come last so that adding them
    leaves the fronthaul endpoints' random streams unchanged."""
    eps = [(e, r, c, "fronthaul") for e, r, c in _endpoint_list(cfg)]
    eps += [(f"wan-{i + 1:03d}", "transport", ("udp_echo",), "wan") for i in range(cfg.n_wan)]
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


def _record_incident(
    cfg: SimulatorConfig, endpoint_id: str, k: int, typ: str, sev: str, start: int, length: int, end: int, dt: float,
    sigs: list[str], affected: list[str], values: dict[str, np.ndarray], lbm_ok: np.ndarray | None,
    is_anom: np.ndarray, itype: np.ndarray, inc_id: np.ndarray, incidents: list[dict],
) -> None:
    """Both profiles: the outage after an episode (samples start + length .. end lose every
    reply), its labels, and its row of the incident table. In place."""
    outage_start_ms = None
    if end > start + length:
        osl = slice(start + length, end)
        for s in sigs:
            values[s][osl] = np.nan
        if lbm_ok is not None:
            lbm_ok[osl] = False
            affected = affected + ["lbm_success"]
        outage_start_ms = cfg.start_ms + int(round((start + length) * dt * 1000))
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
            "signals": ",".join(dict.fromkeys(affected)),
        }
    )


def _type_weights(types: list[str], mix: dict[str, float]) -> np.ndarray:
    """Draw probabilities of the feasible incident types (uniform when the mix gives none)."""
    w = np.array([mix.get(t, 0.0) for t in types], dtype=float)
    if w.sum() <= 0:
        w = np.ones(len(types))
    return w / w.sum()


def _endpoint_frame(
    cfg: SimulatorConfig, endpoint_id: str, role: str, caps: tuple[str, ...], t_s: np.ndarray, values: dict[str, np.ndarray],
    base: dict[str, float], noise_std: dict[str, float], lbm_ok: np.ndarray | None, is_anom: np.ndarray, itype: np.ndarray,
    inc_id: np.ndarray,
) -> tuple[pd.DataFrame, dict]:
    """Both profiles' last step: the physical floor (a delay is at least 1 % of its baseline),
    the endpoint's sample frame and its row of the endpoint table."""
    n = len(t_s)
    for s, v in values.items():
        np.maximum(v, 0.01 * base[s], out=v)
    frame = {"timestamp_ms": cfg.start_ms + np.round(t_s * 1000).astype(np.int64), "endpoint_id": np.full(n, endpoint_id, dtype=object)}
    for s in VALUE_SIGNALS:
        frame[s] = values.get(s, np.full(n, np.nan))
    frame["lbm_success"] = pd.array(lbm_ok, dtype="boolean") if lbm_ok is not None else pd.array([pd.NA] * n, dtype="boolean")
    frame["is_anomaly"] = is_anom
    frame["anomaly_type"] = pd.array(itype, dtype="string")
    frame["incident_id"] = pd.array(inc_id, dtype="string")
    ep_row = {"endpoint_id": endpoint_id, "role": role, "capabilities": capability_key(caps)}
    for s in VALUE_SIGNALS:
        ep_row[f"{s}_base"] = base.get(s, np.nan)
        ep_row[f"{s}_noise_std"] = noise_std.get(s, np.nan)
    return pd.DataFrame(frame), ep_row


def _simulate_endpoint_clean(cfg: SimulatorConfig, seed: np.random.SeedSequence, endpoint_id: str, role: str, caps: tuple[str, ...]):
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
    w = _type_weights(types, cfg.mix)
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
        k += 1
        _record_incident(cfg, endpoint_id, k, typ, sev, start, length, end, dt, sigs, affected, values, lbm_ok, is_anom, itype, inc_id, incidents)
        cursor = end * dt + cfg.min_gap_minutes * 60.0 + rng.exponential(mean_gap_s)

    frame, ep_row = _endpoint_frame(cfg, endpoint_id, role, caps, t_s, values, base, noise_std, lbm_ok, is_anom, itype, inc_id)
    return frame, incidents, ep_row


# --- realistic profile ---------------------------------------------------------------------

# log-uniform baseline ranges (signal unit) per endpoint group
_R_BASE: dict[str, dict[str, tuple[float, float]]] = {
    "fronthaul": {"udp_echo_rtt_ms": (1.0, 10.0), "ecpri_ow_us": (50.0, 200.0), "lbm_rtt_ms": (1.0, 10.0)},
    "wan": {"udp_echo_rtt_ms": (70.0, 400.0)},
}
# healthy noise std as a fraction of the baseline, per group
_R_NOISE_FRAC = {"fronthaul": (0.02, 0.05), "wan": (0.01, 0.04)}
# queue drain factor per sample: fronthaul probes every few seconds see one queue drain over
# many samples; probes minutes apart see little memory
_R_PHI = {"fronthaul": (0.8, 0.95), "wan": (0.3, 0.7)}
# asymmetric daily load (hour, level): fast morning rise, long busy day, slow evening decay
_LOAD_HOURS = np.array([0.0, 4.0, 6.0, 8.0, 9.5, 13.0, 17.0, 20.0, 23.0])
_LOAD_LEVEL = np.array([0.25, 0.05, 0.1, 0.85, 1.0, 0.95, 0.9, 0.6, 0.35])
_BENIGN_SPIKE_P = 1.0 / 300.0  # per sample and signal
_BENIGN_SPIKE_FRAC = (0.1, 0.6)  # of the baseline
_MISSING_P = 0.001  # isolated missing reply, per sample and signal
_ROUTE_STEPS_PER_HOUR = 1.0 / 16.0
_ROUTE_STEP_FRAC = (0.02, 0.06)
_ROUTE_STEP_HOURS = (1.0, 8.0)
# incident magnitude in units of the endpoint's healthy noise std, per severity
_R_SIGMAS = {"minor": (1.5, 3.0), "major": (3.0, 6.0), "critical": (6.0, 20.0)}
_R_DRIFT_FACTOR = 2.0  # a ramp from zero ends at twice the class magnitude
_R_JITTER_SIGMAS = {"minor": (1.5, 3.0), "major": (3.0, 5.0), "critical": (5.0, 10.0)}  # extra std
_R_LOSS_P = {"minor": (0.5, 0.7), "major": (0.7, 0.9), "critical": (0.9, 1.0)}
_R_INTERMITTENT_P = (0.2, 0.4)
_R_DURATION_MIN = {
    "burst": (0.25, 2.0), "step": (20.0, 90.0), "drift": (10.0, 30.0), "loss": (1.0, 5.0),
    "intermittent_loss": (5.0, 20.0), "single_signal": (5.0, 20.0), "concurrent": (2.0, 10.0),
    "correlated": (5.0, 15.0), "jitter": (5.0, 20.0),
}


def _feasible_realistic(caps: tuple[str, ...]) -> list[str]:
    types = ["burst", "step", "drift", "loss", "intermittent_loss", "jitter"]
    if len(_signals_of(caps)) >= 2:
        types += ["single_signal", "concurrent"]
    if "ecpri" in caps and "udp_echo" in caps:
        types.append("correlated")
    return [t for t in REALISTIC_TYPES if t in types]


def _shot_queue(rng: np.random.Generator, n: int, phi: float, intensity: np.ndarray) -> np.ndarray:
    """Queueing delay as filtered shot noise, standardized: arrivals (more in busy hours) add a
    lognormal amount of work at once, which drains geometrically. Rises in one sample, decays
    over many: skewed upward with occasional large excursions, like real queues."""
    arrive = rng.random(n) < 0.3 * intensity
    work = rng.lognormal(0.0, 1.2, n) * arrive
    q = lfilter([1.0], [1.0, -phi], work)
    sd = q.std()
    return (q - q.mean()) / sd if sd > 0 else q


def _simulate_endpoint_realistic(
    cfg: SimulatorConfig, seed: np.random.SeedSequence, endpoint_id: str, role: str, caps: tuple[str, ...], group: str
):
    rng = np.random.default_rng(seed)
    dt = cfg.wan_interval_s if group == "wan" else cfg.interval_s
    n = cfg.samples_at(dt)
    t_s = np.arange(n) * dt
    hours = ((cfg.start_ms / 1000.0 + t_s) / 3600.0 + rng.uniform(-1.0, 1.0)) % 24.0
    load = np.interp(hours, _LOAD_HOURS, _LOAD_LEVEL, period=24.0)
    load_amp = rng.uniform(0.03, 0.08)
    intensity = 0.6 + 0.8 * load  # busy hours: more queueing
    phi_lo, phi_hi = _R_PHI[group]
    shared = _shot_queue(rng, n, rng.uniform(phi_lo, phi_hi), intensity)  # one path, one queue
    sigs = _signals_of(caps)

    # benign route changes: the whole path's delay moves by a few percent for hours
    route = np.zeros(n)
    benign: list[dict] = []
    n_steps = rng.poisson(cfg.duration_hours * _ROUTE_STEPS_PER_HOUR)
    for _ in range(n_steps):
        a = int(rng.integers(0, n))
        b = min(n, a + max(1, int(round(rng.uniform(*_ROUTE_STEP_HOURS) * 3600.0 / dt))))
        m = rng.choice([-1.0, 1.0]) * rng.uniform(*_ROUTE_STEP_FRAC)
        route[a:b] += m
        benign.append({"endpoint_id": endpoint_id, "kind": "route_step", "start": a, "end": b, "magnitude": float(m)})

    values: dict[str, np.ndarray] = {}
    base: dict[str, float] = {}
    noise_std: dict[str, float] = {}
    for s in sigs:
        lo, hi = _R_BASE[group][s]
        b = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        sd = b * rng.uniform(*_R_NOISE_FRAC[group])
        own = _shot_queue(rng, n, rng.uniform(phi_lo, phi_hi), intensity)
        wander = _ar1(rng, n, 0.98 if group == "fronthaul" else 0.8, 1.0)
        # unit variance overall: shared and own queueing, slow wander, white timestamping jitter
        noise = sd * (0.55 * shared + 0.6 * own + 0.3 * wander + 0.5 * rng.standard_normal(n))
        v = b * (1.0 + load_amp * load + route) + noise
        spike = np.flatnonzero(rng.random(n) < _BENIGN_SPIKE_P)
        frac = rng.uniform(*_BENIGN_SPIKE_FRAC, len(spike))
        v[spike] += b * frac
        benign += [
            {"endpoint_id": endpoint_id, "kind": f"spike:{s}", "start": int(i), "end": int(i) + 1, "magnitude": float(f)}
            for i, f in zip(spike, frac)
        ]
        v[rng.random(n) < _MISSING_P] = np.nan
        values[s], base[s], noise_std[s] = v, b, sd
    lbm_ok = (rng.random(n) >= _MISSING_P) if "lbm" in caps else None
    if lbm_ok is not None:
        values["lbm_rtt_ms"][~lbm_ok] = np.nan

    is_anom = np.zeros(n, dtype=bool)
    itype = np.full(n, None, dtype=object)
    inc_id = np.full(n, None, dtype=object)
    incidents = []
    types = _feasible_realistic(caps)
    w = _type_weights(types, cfg.mix)
    mean_dur_s = 60.0 * sum(
        wi * (np.mean(_R_DURATION_MIN[t]) + (cfg.drift_outage_probability * np.mean(_OUTAGE_MIN) if t == "drift" else 0.0))
        for wi, t in zip(w, types)
    )
    per_incident_s = 86400.0 / max(cfg.incidents_per_endpoint_day, 1e-9)
    mean_gap_s = max(60.0, per_incident_s - mean_dur_s - cfg.min_gap_minutes * 60.0)
    per_min = 60.0 / dt
    cursor = rng.exponential(mean_gap_s) if cfg.incidents_per_endpoint_day > 0 else np.inf
    k = 0
    while cursor < n * dt:
        typ = str(rng.choice(types, p=w))
        sev = str(rng.choice(SEVERITIES, p=_SEVERITY_P))
        start = int(cursor / dt)
        length = max(2, int(round(rng.uniform(*_R_DURATION_MIN[typ]) * per_min)))
        outage_len = 0
        if typ == "drift" and rng.random() < cfg.drift_outage_probability:
            outage_len = max(2, int(round(rng.uniform(*_OUTAGE_MIN) * per_min)))
        end = start + length + outage_len  # exclusive
        if end > n - 1:
            break  # would not end inside the series; every incident ends
        sl = slice(start, start + length)
        mag = {s: rng.uniform(*_R_SIGMAS[sev]) * noise_std[s] for s in sigs}
        affected: list[str] = list(sigs)
        if typ == "burst":  # a queue builds up for seconds to minutes, unevenly
            for s in sigs:
                values[s][sl] += mag[s] * rng.uniform(0.5, 1.5, length)
        elif typ in ("step", "concurrent"):  # the level moves and stays up (step: for long)
            for s in sigs:
                values[s][sl] += mag[s]
        elif typ == "drift":  # a ramp from zero, linear to convex
            ramp = np.linspace(0.0, 1.0, length) ** rng.uniform(1.0, 2.0)
            for s in sigs:
                values[s][sl] += _R_DRIFT_FACTOR * mag[s] * ramp
        elif typ in ("loss", "intermittent_loss"):
            p = rng.uniform(*(_R_LOSS_P[sev] if typ == "loss" else _R_INTERMITTENT_P))
            for s in sigs:  # each probe type is lost on its own; a lost loopback has no RTT
                if s != "lbm_rtt_ms":
                    values[s][sl][rng.random(length) < p] = np.nan
            if lbm_ok is not None:
                lbm_ok[sl][rng.random(length) < p] = False
                values["lbm_rtt_ms"][sl][~lbm_ok[sl]] = np.nan
                affected.append("lbm_success")
        elif typ == "single_signal":  # one signal degrades, the others stay normal
            target = str(rng.choice(sigs))
            affected = [target]
            values[target][sl] += mag[target]
        elif typ == "correlated":  # eCPRI delay rises while UDP echo stays normal
            affected = ["ecpri_ow_us"]
            values["ecpri_ow_us"][sl] += mag["ecpri_ow_us"]
        else:  # jitter: the variance grows, the mean does not
            for s in sigs:
                values[s][sl] += rng.uniform(*_R_JITTER_SIGMAS[sev]) * noise_std[s] * rng.standard_normal(length)
        k += 1
        _record_incident(cfg, endpoint_id, k, typ, sev, start, length, end, dt, sigs, affected, values, lbm_ok, is_anom, itype, inc_id, incidents)
        cursor = end * dt + cfg.min_gap_minutes * 60.0 + rng.exponential(mean_gap_s)

    for ev in benign:  # sample positions -> epoch ms (end exclusive)
        ev["start"] = int(cfg.start_ms + round(ev["start"] * dt * 1000))
        ev["end"] = int(cfg.start_ms + round(ev["end"] * dt * 1000))
    frame, ep_row = _endpoint_frame(cfg, endpoint_id, role, caps, t_s, values, base, noise_std, lbm_ok, is_anom, itype, inc_id)
    ep_row["group"] = group
    ep_row["interval_s"] = float(dt)
    return pd.DataFrame(frame), incidents, ep_row, benign


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
    frames, incs, rows, benign = [], [], [], []
    if cfg.profile == "clean":
        eps = _endpoint_list(cfg)
        seeds = np.random.SeedSequence(cfg.seed).spawn(len(eps))
        for ss, (eid, role, caps) in zip(seeds, eps):
            f, inc, row = _simulate_endpoint_clean(cfg, ss, eid, role, caps)
            frames.append(f)
            incs += inc
            rows.append(row)
    else:
        reps = _realistic_endpoint_list(cfg)
        seeds = np.random.SeedSequence(cfg.seed).spawn(len(reps))
        for ss, (eid, role, caps, group) in zip(seeds, reps):
            f, inc, row, ben = _simulate_endpoint_realistic(cfg, ss, eid, role, caps, group)
            frames.append(f)
            incs += inc
            rows.append(row)
            benign += ben
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
    ben = pd.DataFrame(benign, columns=list(BENIGN_COLUMNS)).astype({"start": "int64", "end": "int64", "magnitude": float})
    ben = ben.sort_values(["start", "endpoint_id", "kind"], kind="stable").reset_index(drop=True)
    return SimulatedData(
        samples=samples, incidents=incidents, endpoints=endpoints, labels=_labels(samples, incidents), benign=ben
    )
