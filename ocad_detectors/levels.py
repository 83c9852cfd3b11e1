"""Streaming two-sided level-shift detector that re-anchors on the new level (issue 11).

One state per (endpoint, signal), ``update(state, ts_ms, value)`` per sample, river style; pure
Python (no numpy on the hot path, a few µs per sample). This module imports nothing from the
rest of the package (but the leaf :mod:`ocad_detectors.isotime`), so ``config.py`` can import
:class:`LevelShiftConfig` from here.

Method (a robust two-sided CUSUM on the current segment, re-anchored after each change):

- The current *segment* has a level ``mu`` (median) and a scale ``sigma`` (1.4826·MAD, at least
  ``scale_floor_rel·|mu|``) over its last ``reference_window_s``; they are recomputed every sample
  while the segment is young and every ``_REFRESH`` samples (or 1/16 of the window, if longer) after that. Samples of an ongoing
  excursion (a sum above 0) are left out, so a shift does not leak into its own reference (the
  self-normalisation trap of DOMAIN.md); an excursion that never confirms is dropped after
  ``max_pending_s`` so a slow drift cannot saturate the sums.
- The unit of the sums is the smallest shift of interest, ``delta = max(min_shift_sigma·sigma,
  min_shift_rel·|mu|)``: ``y = clip((x - mu) / delta, ±clip)``, ``S+ = max(0, S+ + y - k)``,
  ``S- = max(0, S- - y - k)`` (capped at 2h). The sample at which a sum left 0 starts its
  candidate new segment (the argmin of the CUSUM path).
- A change is *confirmed* when a sum is above ``h``, the candidate has lasted ``min_duration_s``,
  its median and its inner median (lower for up, upper for down) are ``confirm_shift·delta`` or
  more from ``mu``, and the shift is ``min_snr`` times the candidate's own spread. One late reply,
  however large, cannot be a sustained shift (its ``y`` is clipped and the medians ignore it).
- The change time reported is the estimated first sample of the new level (the first candidate
  sample past the midpoint between the two levels), not the detection sample. Then the
  detector re-anchors: a new segment starts there, its level is re-estimated on the new samples
  (its scale is the old one for its first ``_MIN_SCALE_N`` samples), both sums restart. A
  lasting shift gives one change record, not days of alarm.
- ``up_evidence`` (degradation evidence for the alert policy) is true from a confirmed upward
  change until the new level has held ``rebaseline_s`` (it is the normal level then) or until a
  downward change. The score is ``S+`` through the squash map (0.5 at ``h``), at least 0.5
  while the evidence holds.

Times enter only through the sample interval, inferred per state as the median of the last 15
positive inter-arrival times (missing replies count, backward steps and duplicates do not):
every ``*_s`` parameter becomes a sample count ``round(seconds / interval)`` (at least 1), so
5 s and 240 s probes with time-scaled parameters (:meth:`LevelShiftConfig.scaled`) take
identical decisions. Missing values (NaN) are skipped. The defaults were tuned on 240 s RIPE
Atlas RTT traces (the ``dev`` split of ``ocad_pipeline.change_eval``).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["ChangeRecord", "LevelShiftConfig", "LevelShiftDetector", "LevelShiftState"]

_REFRESH = 8  # reference refresh period (samples) once a segment is old enough; at least 1/16 of the window
_NUMPY_FROM = 64  # windows longer than this take their medians from numpy (same values, faster)
_MIN_SCALE_N = 8  # samples before a new segment's own scale replaces the previous one
_MIN_WARM = 3  # valid samples before the first reference exists, whatever the interval
_DT_N = 15  # inter-arrival times the interval median is taken over
_INF = math.inf
_SECONDS = ("min_duration_s", "max_pending_s", "reference_window_s", "warmup_s", "rebaseline_s")


def _chk(name: str, v: Any, *, lo: float | None = None, positive: bool = False, hi: float | None = None) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"levels.{name}: expected a finite number, got {v!r}")
    if positive and v <= 0:
        raise ValueError(f"levels.{name}: must be > 0, got {v!r}")
    if lo is not None and v < lo:
        raise ValueError(f"levels.{name}: must be >= {lo}, got {v!r}")
    if hi is not None and v > hi:
        raise ValueError(f"levels.{name}: must be <= {hi}, got {v!r}")


@dataclass(frozen=True)
class LevelShiftConfig:
    """Level-shift policy: shift sizes in robust σ and relative to the level, CUSUM constants in
    units of the smallest shift of interest (delta), durations in seconds (never samples).
    Defaults: tuned on 240 s RIPE Atlas RTT traces (dev split); ``scaled(f)`` for other rates."""

    #: False: ``update`` returns (0, False, None) and keeps no statistics
    enabled: bool = True
    #: the smallest shift of interest, delta = max(min_shift_sigma * robust sigma of the segment,
    #: min_shift_rel * |segment level|); the CUSUM runs on y = (x - level) / delta
    min_shift_sigma: float = 4.0
    #: ... relative part of delta (0.01 = 1 % of the level)
    min_shift_rel: float = 0.008
    #: CUSUM slack per sample, in units of delta (0.5: tuned for a shift of exactly delta)
    k: float = 0.5
    #: CUSUM decision threshold, in units of delta
    h: float = 2.0
    #: y is clipped to +-clip before summing, so one sample adds at most ``clip - k``
    clip: float = 2.0
    #: a confirmed change needs the median (and the inner median) of the new samples at least
    #: confirm_shift * delta away from the old level
    confirm_shift: float = 1.0
    #: ... and the shift must be at least min_snr times the robust spread of the new samples
    #: (a burst of jitter scatters widely; a new level is tight around its median)
    min_snr: float = 2.0
    #: a new level must have lasted this long (seconds, from its first sample) to be confirmed
    min_duration_s: float = 8 * 240.0
    #: an excursion that has not confirmed after this long (seconds) is dropped (the reference
    #: then absorbs it): a slow drift of less than delta must not saturate the sums
    max_pending_s: float = 32 * 240.0
    #: trailing span (seconds) of the current segment that its level and scale come from
    reference_window_s: float = 16 * 240.0
    #: span (seconds) before the very first segment is trusted (no change before it)
    warmup_s: float = 8 * 240.0
    #: after a confirmed upward change, ``up_evidence`` lasts until the new level has held this
    #: long (seconds); then it is the normal level (re-baselined)
    rebaseline_s: float = 3600.0
    #: the robust sigma is at least this fraction of |level| (flat traces have MAD ~ 0)
    scale_floor_rel: float = 0.0005
    #: short-horizon degradation evidence before a change is confirmed: an upper CUSUM of
    #: z = (x - level) / robust sigma, clipped at fast_clip, with slack fast_k; evidence while it
    #: is above fast_h (fast_h = 0: off; capped at 1.5 fast_h so it ends soon after recovery).
    #: In σ·samples, like any CUSUM; change records are not affected.
    fast_k: float = 3.0
    fast_h: float = 25.0
    fast_clip: float = 4.0
    #: variance (jitter) evidence without a level change: two CUSUMs of the deviation from the
    #: level, one of the part above it and one of the part below (each clipped at jitter_clip,
    #: slack jitter_k); evidence while *both* are above jitter_h (0: off; capped at 1.5
    #: jitter_h). Wider scatter on both sides is jitter; one-sided deviations are a queue (up)
    #: or a level moving (up, or down as at a recovery), which the other detectors handle.
    jitter_k: float = 1.0
    jitter_h: float = 12.0
    jitter_clip: float = 6.0

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ValueError(f"levels.enabled: expected true or false, got {self.enabled!r}")
        _chk("k", self.k, lo=0.0)
        _chk("h", self.h, positive=True)
        _chk("clip", self.clip, positive=True)
        for name in ("fast_k", "fast_h", "jitter_k", "jitter_h"):
            _chk(name, getattr(self, name), lo=0.0)
        _chk("fast_clip", self.fast_clip, positive=True)
        _chk("jitter_clip", self.jitter_clip, positive=True)
        _chk("min_shift_sigma", self.min_shift_sigma, lo=0.0)
        _chk("min_shift_rel", self.min_shift_rel, lo=0.0, hi=10.0)
        _chk("confirm_shift", self.confirm_shift, lo=0.0)
        _chk("min_snr", self.min_snr, lo=0.0)
        _chk("scale_floor_rel", self.scale_floor_rel, lo=0.0, hi=1.0)
        for name in _SECONDS:
            _chk(name, getattr(self, name), positive=True)
        if self.min_shift_sigma <= 0 and self.min_shift_rel <= 0:
            raise ValueError("levels: min_shift_sigma and min_shift_rel cannot both be 0 (no shift size to look for)")
        if self.clip <= self.k:
            raise ValueError(f"levels.clip ({self.clip}) must be above levels.k ({self.k}): no sample could move the CUSUM")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> LevelShiftConfig:
        """Build from a mapping; unknown keys are errors (a typo must not fall back silently)."""
        if d is None:
            return cls()
        allowed = set(cls.__dataclass_fields__)
        unknown = sorted(str(k) for k in d if k not in allowed)
        if unknown:
            raise ValueError(f"levels: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
        return cls(**dict(d))

    def scaled(self, factor: float) -> LevelShiftConfig:
        """The same policy for probes ``factor`` times as frequent: every ``*_s`` divided."""
        _chk("factor", factor, positive=True)
        kw = asdict(self)
        for name in _SECONDS:
            kw[name] = kw[name] / factor
        return LevelShiftConfig(**kw)


@dataclass(frozen=True)
class ChangeRecord:
    """One confirmed level change; ``change_ms`` is the first sample of the new level."""

    endpoint_id: str
    signal: str
    direction: str  # "up" or "down"
    change_ms: int
    detected_ms: int
    level_before: float
    level_after: float
    unit: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with ``event: change`` and the change time as ISO 8601 UTC text."""
        from ocad_detectors.isotime import iso_ms

        return {**asdict(self), "event": "change", "change_time": iso_ms(self.change_ms)}


class LevelShiftState:
    """Everything one (endpoint, signal) needs; plain numbers and lists (JSON-able via to_dict)."""

    __slots__ = (
        "base", "changes", "delta", "dn_start", "dt", "dt_k", "dts", "endpoint_id", "evidence", "last_ts",
        "fast", "jit", "jitd", "mu", "n", "rebase_ms", "ref_i", "seg_start", "sigma", "sigma_prev", "signal", "sm", "sp", "ts",
        "unit", "up_start", "xs",
    )

    def __init__(self, endpoint_id: str = "", signal: str = "", unit: str = "") -> None:
        self.endpoint_id = endpoint_id
        self.signal = signal
        self.unit = unit
        self.n = 0  # valid samples seen; the absolute index of the next one
        self.base = 0  # absolute index of xs[0]
        self.xs = array("d")  # recent valid values (bounded; compact: 8 bytes each)
        self.ts = array("q")  # their time stamps (ms)
        self.last_ts = -1  # last time stamp seen (valid or not)
        self.dts: list[int] = []  # recent positive inter-arrival times (ms)
        self.dt = 0.0  # inferred sample interval (ms); 0 = not known yet
        self.seg_start = 0  # absolute index of the current segment's first sample
        self.mu = math.nan
        self.sigma = math.nan
        self.sigma_prev = 0.0  # scale of the previous segment (floor while the new one is young)
        self.delta = math.nan  # smallest shift of interest here (signal unit): CUSUM unit
        self.ref_i = 0  # sample index of the last reference refresh
        self.dt_k = 0  # inter-arrival times seen
        self.changes = 0  # change records emitted
        self.sp = 0.0
        self.sm = 0.0
        self.up_start = 0
        self.dn_start = 0
        self.evidence = False  # upward change confirmed and not yet re-baselined
        self.fast = 0.0  # short-horizon upper CUSUM in robust σ of the current level
        self.jit = 0.0  # CUSUM of the deviation above the level (jitter, upper half), robust σ
        self.jitd = 0.0  # ... and below it (lower half)
        self.rebase_ms = 0  # sample time at which the evidence ends (re-baselined)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able numbers, strings and lists (NaN as None)."""
        out: dict[str, Any] = {}
        for name in self.__slots__:
            v = getattr(self, name)
            out[name] = list(v) if isinstance(v, (list, array)) else (None if isinstance(v, float) and v != v else v)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LevelShiftState:
        """Inverse of :meth:`to_dict` (a state saved by a service restart continues exactly)."""
        d = {"jit": 0.0, "jitd": 0.0, **d}  # snapshots from before the jitter CUSUM existed
        missing = [k for k in cls.__slots__ if k not in d]
        if missing:
            raise ValueError(f"levels state: missing field(s) {missing}")
        st = cls()
        for name in cls.__slots__:
            v = d[name]
            if v is None and isinstance(getattr(st, name), float):
                v = math.nan
            cur = getattr(st, name)
            setattr(st, name, array(cur.typecode, v) if isinstance(cur, array) else (list(v) if isinstance(v, list) else v))
        return st


def _median(v: Sequence[float]) -> float:
    s = sorted(v)
    m = len(s)
    h = m // 2
    return s[h] if m % 2 else 0.5 * (s[h - 1] + s[h])


class LevelShiftDetector:
    """Two-sided robust CUSUM with re-anchoring; see the module docstring."""

    name = "levels"

    def __init__(self, config: LevelShiftConfig | None = None) -> None:
        self.config = config or LevelShiftConfig()
        c = self.config
        self._k = c.k
        self._h = c.h
        self._clip = c.clip
        self._cap = 2.0 * c.h
        self._states: dict[tuple[str, str], LevelShiftState] = {}

    def new_state(self, endpoint_id: str = "", signal: str = "", unit: str = "") -> LevelShiftState:
        return LevelShiftState(endpoint_id, signal, unit)

    # -- helpers ---------------------------------------------------------------------------

    def _count(self, st: LevelShiftState, seconds: float) -> int:
        """A duration in seconds as a sample count at this state's inferred interval (>= 1)."""
        if st.dt <= 0.0:
            return 1 << 30
        n = int(round(seconds * 1000.0 / st.dt))
        return n if n > 1 else 1

    def _refresh(self, st: LevelShiftState, end: int) -> None:
        """mu, sigma, delta from the segment's samples [max(seg_start, end - W), end)."""
        c = self.config
        w = self._count(st, c.reference_window_s)
        lo = max(st.seg_start, end - w, st.base)
        st.ref_i = st.n
        if end - lo < 1:
            return
        vals = st.xs[lo - st.base:end - st.base]
        if len(vals) > _NUMPY_FROM:  # long windows (fast probes): the same medians, in numpy
            import numpy as np

            arr = np.array(vals)
            mu = float(np.median(arr))
            sig = float(np.median(np.abs(arr - mu))) * 1.4826
        else:
            mu = _median(vals)
            sig = _median([abs(v - mu) for v in vals]) * 1.4826 if len(vals) > 2 else 0.0
        fl = c.scale_floor_rel * abs(mu)
        if sig < fl:
            sig = fl
        if end - st.seg_start < _MIN_SCALE_N and st.sigma_prev > 0.0:
            sig = st.sigma_prev  # a few samples of a new level say little about its noise
        d = c.min_shift_sigma * sig
        dr = c.min_shift_rel * abs(mu)
        if dr > d:
            d = dr
        if d <= 0.0:
            d = 1e-9 * abs(mu) + 1e-12
        st.mu = mu
        st.sigma = sig
        st.delta = d

    def _confirm(self, st: LevelShiftState, start: int, up: bool, ts_ms: int) -> ChangeRecord | None:
        c = self.config
        n = st.n  # samples [start, n) are the candidate new segment
        m_min = self._count(st, c.min_duration_s)
        if n - start < m_min:
            return None
        base = st.base
        xs = st.xs
        # the new level is the candidate's median; its inner median (lower for up, upper for
        # down) must be past the threshold too, so most candidate samples are shifted
        cand = sorted(xs[start - base:n - base])
        mm = len(cand)
        h2 = mm // 2
        new = cand[h2] if mm % 2 else 0.5 * (cand[h2 - 1] + cand[h2])
        inner = cand[(mm - 1) // 2] if up else cand[h2]
        thr = c.confirm_shift * st.delta
        mu = st.mu
        if up:
            if new - mu < thr or inner - mu < thr:
                return None
        elif mu - new < thr or mu - inner < thr:
            return None
        if c.min_snr > 0.0 and abs(new - mu) < c.min_snr * 1.4826 * _median([abs(v - new) for v in cand]):
            return None  # a burst of jitter, not a new level: the shift is small against its own spread
        # change start: the first candidate sample past the midpoint between the two levels
        j = start
        mid = 0.5 * (mu + new)
        while j < n - 1 and ((xs[j - base] <= mid) if up else (xs[j - base] >= mid)):
            j += 1
        after = _median(xs[j - base:n - base])
        rec = ChangeRecord(st.endpoint_id, st.signal, "up" if up else "down", int(st.ts[j - base]), int(ts_ms),
                           float(mu), float(after), st.unit)
        # re-anchor on the new segment
        st.sigma_prev = st.sigma
        st.seg_start = j
        st.sp = st.sm = 0.0
        st.fast = 0.0
        st.jit = st.jitd = 0.0
        st.up_start = st.dn_start = n
        self._refresh(st, n)
        if up:
            st.evidence = True
            st.rebase_ms = int(st.ts[j - base]) + int(round(c.rebaseline_s * 1000.0))
        else:
            st.evidence = False
        st.changes += 1
        return rec

    # -- the streaming step ----------------------------------------------------------------

    def update(self, st: LevelShiftState, ts_ms: int, value: float) -> tuple[float, bool, ChangeRecord | None]:
        """One sample -> (score in [0, 1], up_evidence, change confirmed at this sample or None)."""
        if not self.config.enabled:
            return 0.0, False, None
        ts_ms = int(ts_ms)
        d = ts_ms - st.last_ts
        if st.last_ts >= 0 and d > 0:
            dts = st.dts
            dts.append(d)
            if len(dts) > _DT_N:
                del dts[0]
            st.dt_k += 1
            if st.dt_k < _DT_N or st.dt_k % _DT_N == 0:
                st.dt = float(_median(dts))
        if d > 0:
            st.last_ts = ts_ms
        if value != value or value in (_INF, -_INF):
            return self._score(st), st.evidence, None
        x = float(value)
        i = st.n
        st.xs.append(x)
        st.ts.append(ts_ms)
        st.n = i + 1
        if st.dt <= 0.0 or i + 1 < _MIN_WARM or i + 1 < self._count(st, self.config.warmup_s):
            # the first segment warming up: nothing to compare yet; its reference is computed
            # once, on the first sample after the warm-up (the same window a per-sample refresh
            # would have ended with, without sorting it hundreds of times at fast probe rates)
            return 0.0, False, None
        sp = st.sp
        sm = st.sm
        if st.mu != st.mu and i > st.seg_start:
            self._refresh(st, i)
            st.ref_i = i
        if i - st.seg_start < 16 or i - st.ref_i >= max(_REFRESH, self._count(st, self.config.reference_window_s) >> 4):
            end = i
            if sp > 0.0 and st.up_start < end:
                end = st.up_start
            if sm > 0.0 and st.dn_start < end:
                end = st.dn_start
            if end > st.seg_start:
                self._refresh(st, end)
        c = self.config
        if st.sigma > 0.0:
            z = (x - st.mu) / st.sigma
            if c.fast_h > 0.0:
                zf = z if z < c.fast_clip else c.fast_clip
                f = st.fast + zf - c.fast_k
                st.fast = 0.0 if f < 0.0 else (f if f < 1.5 * c.fast_h else 1.5 * c.fast_h)
            if c.jitter_h > 0.0:
                cap = 1.5 * c.jitter_h
                a = z if z < c.jitter_clip else c.jitter_clip
                f = st.jit + (a if a > 0.0 else 0.0) - c.jitter_k
                st.jit = 0.0 if f < 0.0 else (f if f < cap else cap)
                a = -z if -z < c.jitter_clip else c.jitter_clip
                f = st.jitd + (a if a > 0.0 else 0.0) - c.jitter_k
                st.jitd = 0.0 if f < 0.0 else (f if f < cap else cap)
        y = (x - st.mu) / st.delta
        clip = self._clip
        if y > clip:
            y = clip
        elif y < -clip:
            y = -clip
        k = self._k
        cap = self._cap
        if sp == 0.0:
            st.up_start = i
        sp = sp + y - k
        if sp < 0.0:
            sp = 0.0
        elif sp > cap:
            sp = cap
        if sm == 0.0:
            st.dn_start = i
        sm = sm - y - k
        if sm < 0.0:
            sm = 0.0
        elif sm > cap:
            sm = cap
        st.sp = sp
        st.sm = sm
        rec = None
        h = self._h
        if sp > h:
            rec = self._confirm(st, st.up_start, True, ts_ms)
        if rec is None and sm > h:
            rec = self._confirm(st, st.dn_start, False, ts_ms)
        if rec is None:
            # an excursion that never confirms is not a change: let the reference absorb it
            pend = self._count(st, self.config.max_pending_s)
            if sp > 0.0 and i - st.up_start >= pend:
                st.sp = 0.0
            if sm > 0.0 and i - st.dn_start >= pend:
                st.sm = 0.0
        if st.evidence and ts_ms >= st.rebase_ms:
            st.evidence = False
        if len(st.xs) > 4096:
            self._trim(st)
        return self._score(st), st.evidence, rec

    def _score(self, st: LevelShiftState) -> float:
        """Degradation score: the upward sum through the squash map (0.5 at h), >= 0.5 under evidence."""
        sp = st.sp
        h = self._h
        s = 0.5 * sp / h if sp <= h else 1.0 - 0.5 * h / sp
        if st.evidence and s < 0.5:
            return 0.5
        return s

    def _trim(self, st: LevelShiftState) -> None:
        """Keep the buffers bounded: drop what no statistic can still need."""
        keep = self._count(st, self.config.reference_window_s) + self._count(st, self.config.max_pending_s) + 64
        need = min(st.n - keep, st.up_start, st.dn_start, st.seg_start if st.n - st.seg_start < keep else st.n)
        drop = need - st.base
        if drop > 1024:
            del st.xs[:drop]
            del st.ts[:drop]
            st.base += drop

    # -- conveniences ----------------------------------------------------------------------

    def score_one(self, endpoint_id: str, signal: str, ts_ms: int, value: float, unit: str = "") -> tuple[float, bool, ChangeRecord | None]:
        """Standalone use with checked input (``ValueError`` naming the problem); the detector
        keeps one state per (endpoint, signal)."""
        if isinstance(ts_ms, bool) or not isinstance(ts_ms, (int, float)) or ts_ms != ts_ms or abs(ts_ms) == _INF:
            raise ValueError(f"levels: ts_ms must be a number of milliseconds, got {ts_ms!r}")
        if value is None:
            value = math.nan  # a missing reply
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"levels: value must be a number or None (missing), got {value!r}")
        key = (endpoint_id, signal)
        st = self._states.get(key)
        if st is None:
            st = self._states[key] = self.new_state(endpoint_id, signal, unit)
        return self.update(st, ts_ms, value)

    def run(self, ts_ms: Iterable[int], values: Iterable[float], endpoint_id: str = "", signal: str = "", unit: str = "",
            state: LevelShiftState | None = None) -> list[ChangeRecord]:
        """Batch: the same ``update`` in a loop (bit-identical to streaming) -> change records."""
        return self.run_series(ts_ms, values, endpoint_id, signal, unit, state)[2]

    def run_series(self, ts_ms: Iterable[int], values: Iterable[float], endpoint_id: str = "", signal: str = "",
                   unit: str = "", state: LevelShiftState | None = None) -> tuple[list[float], list[bool], list[ChangeRecord]]:
        """Batch with per-sample outputs: (scores, up_evidence flags, change records)."""
        st = state if state is not None else self.new_state(endpoint_id, signal, unit)
        scores: list[float] = []
        ev: list[bool] = []
        recs: list[ChangeRecord] = []
        upd = self.update
        for t, v in zip(ts_ms, values, strict=True):
            s, e, r = upd(st, int(t), float(v))
            scores.append(s)
            ev.append(e)
            if r is not None:
                recs.append(r)
        return scores, ev, recs
