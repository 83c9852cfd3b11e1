"""The pre-separation detectors of seed section 1.1, kept only as a baseline for comparison.

They keep history inside the detector and *train inside* ``detect`` every ``retrain_every``
samples (TCN: ``epochs`` epochs; Isolation Forest: ``n_estimators`` trees), exactly the
behaviour the training/inference separation removes. Nothing in production uses them; the
``mode_comparison`` asset replays the same test stream through both modes and reports F1,
per-sample latency (including the stalls while this one trains) and process memory.

:class:`OnlineTrainingPipeline` is the whole old detector set behind one ``process(sample)``:
the rule and CUSUM detectors of ``ocad_detectors`` (identical code, configuration and
reference statistics as the new mode: they never needed training) plus the two online-training
detectors below in place of the pre-trained TCN and Isolation Forest, fused with the same
noisy-OR weights. So the two modes differ only in how the model-based detectors get their
models.

Old-mode details (the seed shows only the structure, these are our choices):

* residual: per (endpoint, metric) the last ``history`` values; every ``retrain_every`` new
  samples (once 50 are there) the TCN (the pipeline's ``TCNForecaster``: hidden 32, dilations
  1-2-4, kernel 3) runs ``epochs`` full-batch Adam epochs on the z-scored history windows
  (warm start: the same network keeps learning across retrains, the scaler is refitted).
  Residual ``|x - x̂|`` over the std of the last 20 values (as the seed); score 0.5 at
  ``residual_threshold`` (3 σ), like every detector of the new mode.
* multivariate: per capability group the feature vectors of the shared feature engine over the
  endpoint's last ``window`` samples, standardized by the *window's own* mean/std (there are no
  training statistics in the old design); the forest (``n_estimators`` trees) is refitted on
  the group's last ``history`` vectors every ``retrain_every`` vectors of the group. Anomaly
  score ``-score_samples``; 0.5 at scikit-learn's own boundary (0.5, ``contamination="auto"``).
  Like the old system it fits on whatever it saw, anomalies included.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from sklearn.ensemble import IsolationForest

from ocad_detectors._util import EV_MULTIVARIATE, EV_RESIDUAL, EVIDENCE_NAMES, evidence_mask, squash
from ocad_detectors.config import DetectionConfig
from ocad_detectors.features import FeatureConfig, capability_key, features_for_series, model_feature_names, model_matrix
from ocad_detectors.fusion import ScoreFusion
from ocad_detectors.multivariate import if_score_to_unit
from ocad_detectors.pipeline import DetectionPipeline
from ocad_detectors.signals import METRIC_SIGNAL, METRIC_TYPES
from ocad_pipeline.models.tcn_torch import TCNForecaster

__all__ = [
    "OnlineResult",
    "OnlineTrainingMultivariateDetector",
    "OnlineTrainingPipeline",
    "OnlineTrainingResidualDetector",
]

#: the seed's minimum history before the first training
MIN_HISTORY = 50


class _FitClock:
    """Counts trainings and their wall time; ``trained`` says whether the last call trained."""

    def __init__(self) -> None:
        self.fits = 0
        self.fit_seconds = 0.0
        self.trained = False

    def add(self, seconds: float) -> None:
        self.fits += 1
        self.fit_seconds += seconds
        self.trained = True


class OnlineTrainingResidualDetector:
    """Per (endpoint, metric): history of the last ``history`` values, a TCN retrained every
    ``retrain_every`` samples, residual normalized by the std of the last 20 values (as the seed)."""

    def __init__(self, seq_len: int = 10, retrain_every: int = 50, history: int = 1000, epochs: int = 20,
                 hidden_channels: int = 32, residual_threshold: float = 3.0, learning_rate: float = 1e-3,
                 warm_start: bool = True, seed: int = 0):
        if retrain_every < 1 or epochs < 1 or history <= seq_len + 1:
            raise ValueError("retrain_every and epochs must be >= 1 and history > seq_len + 1")
        self.seq_len = seq_len
        self.retrain_every = retrain_every
        self.history = history
        self.epochs = epochs
        self.hidden_channels = hidden_channels
        self.residual_threshold = residual_threshold
        self.learning_rate = learning_rate
        self.warm_start = warm_start
        self.seed = seed
        self.clock = _FitClock()
        self._hist: dict[tuple[str, str], deque] = defaultdict(lambda: deque(maxlen=self.history))
        self._models: dict[tuple[str, str], tuple[TCNForecaster, float, float]] = {}
        self._opt: dict[tuple[str, str], torch.optim.Optimizer] = {}
        self._since: dict[tuple[str, str], int] = defaultdict(int)

    def _train(self, key: tuple[str, str]) -> None:
        t0 = time.perf_counter()
        x = np.asarray(self._hist[key], dtype=np.float64)
        ok = np.isfinite(x)
        if ok.sum() <= self.seq_len + 1:
            return
        mu = float(x[ok].mean())
        sd = float(x[ok].std()) or 1.0
        win = np.lib.stride_tricks.sliding_window_view((x - mu) / sd, self.seq_len + 1)
        win = win[np.isfinite(win).all(axis=1)]  # windows across a lost reply are skipped
        if len(win) < 2:
            return
        xs = torch.tensor(win[:, :-1], dtype=torch.float32)
        ys = torch.tensor(win[:, -1], dtype=torch.float32)
        old = self._models.get(key)
        if old is not None and self.warm_start:
            model, opt = old[0], self._opt[key]
        else:
            torch.manual_seed(self.seed)
            model = TCNForecaster(self.seq_len, self.hidden_channels, dropout=0.0)
            opt = self._opt[key] = torch.optim.Adam(model.parameters(), lr=self.learning_rate)
        model.train()
        for _ in range(self.epochs):
            opt.zero_grad()
            loss = torch.mean((model(xs) - ys) ** 2)
            loss.backward()
            opt.step()
        model.eval()
        self._models[key] = (model, mu, sd)
        self.clock.add(time.perf_counter() - t0)

    def score_one(self, endpoint_id: str, metric: str, value: float) -> float:
        """Score ``value`` (NaN = no reply) after appending it to the history; trains first
        when ``retrain_every`` samples arrived since the last training. Returns [0, 1]."""
        key = (endpoint_id, metric)
        h = self._hist[key]
        prev = list(h)[-self.seq_len:]  # the inputs: never the value being predicted
        h.append(value)
        self._since[key] += 1
        if len(h) >= MIN_HISTORY and self._since[key] >= self.retrain_every:
            self._since[key] = 0
            self._train(key)  # training inside detect: the stall the separation removes
        if key not in self._models or len(prev) < self.seq_len or not np.isfinite(value) or not np.all(np.isfinite(prev)):
            return 0.0
        model, mu, sd = self._models[key]
        with torch.no_grad():
            z = model(torch.tensor([[(p - mu) / sd for p in prev]], dtype=torch.float32))
        pred = float(z.item()) * sd + mu
        recent = np.asarray(list(h)[-20:], dtype=float)
        recent = recent[np.isfinite(recent)]
        std = float(recent.std()) if len(recent) > 3 else 0.0
        resid = abs(value - pred) / std if std > 0 else abs(value - pred)
        return squash(resid, self.residual_threshold)


class OnlineTrainingMultivariateDetector:
    """Per capability group: feature history, an Isolation Forest refitted every ``retrain_every``
    samples on it (seed 1.1), scored on the newest feature vector."""

    #: scikit-learn's decision boundary for contamination="auto": -score_samples > 0.5
    threshold = 0.5

    def __init__(self, feature_config: FeatureConfig | None = None, retrain_every: int = 50, history: int = 1000,
                 n_estimators: int = 100, seed: int = 0):
        if retrain_every < 1 or n_estimators < 1:
            raise ValueError("retrain_every and n_estimators must be >= 1")
        self.feature_config = feature_config or FeatureConfig()
        self.retrain_every = retrain_every
        self.history = history
        self.n_estimators = n_estimators
        self.seed = seed
        self.clock = _FitClock()
        self._window: dict[str, deque] = defaultdict(lambda: deque(maxlen=self.feature_config.window))
        self._feat_hist: dict[str, deque] = defaultdict(lambda: deque(maxlen=self.history))
        self._models: dict[str, IsolationForest] = {}
        self._since: dict[str, int] = defaultdict(int)

    def score_one(self, endpoint_id: str, group: str, t_s: float, values: Mapping[str, float], success: float | None) -> float:
        """``group``: capability key (``ecpri+lbm+udp_echo``); ``values``: metric type -> value
        (NaN = no reply); ``success``: loopback reply arrived (1/0, None/NaN = not probed)."""
        caps = group.split("+")
        w = self._window[endpoint_id]
        w.append((t_s, values, success))
        if len(w) < self.feature_config.window:
            return 0.0
        times = np.array([r[0] for r in w], dtype=np.float64)
        series = {m: np.array([r[1].get(m, np.nan) for r in w], dtype=np.float64) for m in METRIC_TYPES if m in caps}
        # the old detector normalized by its own history: reference = mean/std of the window
        ref = {}
        for m, v in series.items():
            fin = v[np.isfinite(v)]
            ref[m] = (float(fin.mean()), float(fin.std()) or 1.0) if len(fin) else (0.0, 1.0)
        succ = np.array([np.nan if r[2] is None else r[2] for r in w], dtype=np.float64) if "lbm" in caps else None
        f = features_for_series(times, series, succ, ref, self.feature_config)
        names = model_feature_names(caps)
        x = model_matrix({n: f[n][-1:] for n in names}, names)
        self._feat_hist[group].append(x[0])
        self._since[group] += 1
        if len(self._feat_hist[group]) >= MIN_HISTORY and self._since[group] >= self.retrain_every:
            self._since[group] = 0
            t0 = time.perf_counter()
            self._models[group] = IsolationForest(n_estimators=self.n_estimators, random_state=self.seed).fit(
                np.asarray(self._feat_hist[group])
            )
            self.clock.add(time.perf_counter() - t0)
        m = self._models.get(group)
        if m is None:
            return 0.0
        return if_score_to_unit(float(-m.score_samples(x)[0]), self.threshold)


@dataclass(slots=True)
class OnlineResult:
    """What the old detector set says about one sample (the fields the comparison needs)."""

    status: str
    scores: dict[str, float]
    composite: float
    evidence: tuple[str, ...]
    #: did this call train a model (a stall)?
    trained: bool


class OnlineTrainingPipeline:
    """The complete pre-separation detector set: rules + CUSUM (``ocad_detectors``, no models)
    + :class:`OnlineTrainingResidualDetector` + :class:`OnlineTrainingMultivariateDetector`,
    fused with ``config.fusion``; evidence of the online detectors at score >= 0.5.

    ``config``: the same :class:`DetectionConfig` the new mode uses (endpoint capabilities,
    rule thresholds, CUSUM reference statistics); its residual/multivariate sections are
    switched off for the rule/CUSUM part so that no model is loaded.
    """

    def __init__(self, config: DetectionConfig | None = None, *, retrain_every: int = 50, tcn_epochs: int = 20,
                 if_trees: int = 100, history: int = 1000, seq_len: int = 10,
                 feature_config: FeatureConfig | None = None, seed: int = 0):
        cfg = config or DetectionConfig()
        base_cfg = replace(
            cfg,
            residual=replace(cfg.residual, enabled=False),
            multivariate=replace(cfg.multivariate, enabled=False),
            reload=replace(cfg.reload, check_every_samples=0),
        )
        self.base = DetectionPipeline(base_cfg)
        self.residual = OnlineTrainingResidualDetector(seq_len, retrain_every, history, tcn_epochs, seed=seed)
        self.multivariate = OnlineTrainingMultivariateDetector(feature_config, retrain_every, history, if_trees, seed)
        self.fusion = ScoreFusion(cfg.fusion)  # all four detectors active
        self._groups: dict[frozenset[str], str] = {}

    @property
    def fits(self) -> dict[str, int]:
        return {"residual": self.residual.clock.fits, "multivariate": self.multivariate.clock.fits}

    @property
    def fit_seconds(self) -> dict[str, float]:
        return {"residual": self.residual.clock.fit_seconds, "multivariate": self.multivariate.clock.fit_seconds}

    def process(self, sample: Any) -> OnlineResult:
        """Score one sample (a :class:`~ocad_detectors.samples.Sample` or a mapping)."""
        self.residual.clock.trained = self.multivariate.clock.trained = False
        r = self.base.process(sample)
        if r.status != "ok":
            return OnlineResult(r.status, {**r.scores, "residual": 0.0, "multivariate": 0.0}, 0.0, (), False)
        ep = r.endpoint_id
        caps = self.base.endpoints.get(ep, frozenset())
        get = sample.get if isinstance(sample, Mapping) else (lambda k, d=None: getattr(sample, k, d))
        values: dict[str, float] = {}
        s2 = 0.0
        for m in METRIC_TYPES:
            if m not in caps:
                continue
            v = get(METRIC_SIGNAL[m])
            v = float("nan") if v is None else float(v)
            values[m] = v
            s2 = max(s2, self.residual.score_one(ep, m, v))
        s3 = 0.0
        if caps:
            group = self._groups.get(caps)
            if group is None:
                group = self._groups[caps] = capability_key(caps)
            succ = get("lbm_success") if "lbm" in caps else None
            succ = None if succ is None or succ != succ else float(succ)
            s3 = self.multivariate.score_one(ep, group, r.timestamp_ms / 1000.0, values, succ)
        s0, s1 = r.scores["rule"], r.scores["changepoint"]
        ev = evidence_mask(r.evidence)
        if s2 >= 0.5:
            ev |= EV_RESIDUAL
        if s3 >= 0.5:
            ev |= EV_MULTIVARIATE
        scores = {"rule": s0, "changepoint": s1, "residual": s2, "multivariate": s3}
        trained = self.residual.clock.trained or self.multivariate.clock.trained
        return OnlineResult("ok", scores, self.fusion.combine(s0, s1, s2, s3), EVIDENCE_NAMES[ev], trained)
