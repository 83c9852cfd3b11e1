"""Champion/challenger shadow scoring (seed 4.3 "A/B testing").

A challenger model set runs beside production on the same live samples. Production's result is
returned (and its alerts raised) as usual; the challenger's scores and the alerts it *would*
have raised are only recorded, so operators can compare the two before promoting::

    shadow = ShadowScoring(challenger_versions={"tcn_ecpri": "1.1.0", "isolation_forest": "1.1.0"})
    for sample in stream:
        result = shadow.process(sample)      # production's DetectionResult, alerts as usual
    print(shadow.summary())                  # scores and would-be alerts side by side

Both pipelines keep their own buffers and alert state; the challenger never reloads on
promotion (its versions are pinned), production follows the registry as usual. A recorded file
is scored the same way in one call, ``production, challenger = shadow.score_frame(frame)``
(what ``ocad-detect --shadow`` does).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ocad_detectors.config import DetectionConfig
from ocad_detectors.pipeline import BatchResult, DetectionPipeline, DetectionResult

__all__ = ["ShadowRecord", "ShadowScoring"]


@dataclass(frozen=True)
class ShadowRecord:
    """One sample as both model sets saw it."""

    timestamp_ms: int
    endpoint_id: str
    production_composite: float
    challenger_composite: float
    production_scores: Mapping[str, float]
    challenger_scores: Mapping[str, float]
    production_alert: bool
    challenger_would_alert: bool


class ShadowScoring:
    """Production pipeline plus a challenger pipeline whose results are recorded, never alerted."""

    def __init__(
        self,
        challenger_versions: Mapping[str, str],
        config: DetectionConfig | None = None,
        model_dir: str | os.PathLike[str] | None = None,
        keep: int = 100_000,
    ) -> None:
        if not challenger_versions:
            raise ValueError("challenger_versions is empty: name at least one model version to shadow")
        self.production = DetectionPipeline(config, model_dir)
        self.challenger = DetectionPipeline(config, model_dir, versions=challenger_versions)
        self.challenger_versions = dict(challenger_versions)
        #: the last ``keep`` samples, newest last (bounded: a long-running service must not grow)
        self.records: deque[ShadowRecord] = deque(maxlen=keep)
        self._n = 0
        self._alerts = {"production": 0, "challenger": 0}
        self._sum = {"production": 0.0, "challenger": 0.0}
        self._disagree = 0

    def missing_versions(self) -> dict[str, str]:
        """The challenger versions that did not load (not in the registry, or refused)."""
        loaded = self.challenger.model_versions
        return {k: v for k, v in self.challenger_versions.items() if loaded.get(k) != v}

    def process(self, sample: Any) -> DetectionResult:
        """Score with both; return production's result. The challenger's alert is swallowed."""
        prod = self.production.process(sample)
        chal = self.challenger.process(sample)
        if prod.status == "ok" or chal.status == "ok":
            ref = prod if prod.status == "ok" else chal
            assert ref.timestamp_ms is not None and ref.endpoint_id is not None  # set on every "ok" result
            rec = ShadowRecord(
                timestamp_ms=ref.timestamp_ms,
                endpoint_id=ref.endpoint_id,
                production_composite=prod.composite,
                challenger_composite=chal.composite,
                production_scores=dict(prod.scores),
                challenger_scores=dict(chal.scores),
                production_alert=prod.alert is not None,
                challenger_would_alert=chal.alert is not None,
            )
            self.records.append(rec)
            self._n += 1
            self._alerts["production"] += rec.production_alert
            self._alerts["challenger"] += rec.challenger_would_alert
            self._sum["production"] += rec.production_composite
            self._sum["challenger"] += rec.challenger_composite
            self._disagree += rec.production_alert != rec.challenger_would_alert
        return prod

    def score_frame(self, frame: Any, progress: Any = None) -> tuple[BatchResult, BatchResult]:
        """Score a whole recorded frame with both (batch equals streaming); returns
        ``(production, challenger)``. The counts of :meth:`summary` include these samples;
        per-sample :attr:`records` are kept by :meth:`process` only."""
        prod = self.production.score_frame(frame, progress=progress)
        chal = self.challenger.score_frame(frame)
        used = (prod.status == "ok") | (chal.status == "ok")
        p_alert = (prod.alert_index >= 0) & used
        c_alert = (chal.alert_index >= 0) & used
        self._n += int(used.sum())
        self._alerts["production"] += int(p_alert.sum())
        self._alerts["challenger"] += int(c_alert.sum())
        self._sum["production"] += float(np.sum(prod.composite[used]))
        self._sum["challenger"] += float(np.sum(chal.composite[used]))
        self._disagree += int(np.sum(p_alert != c_alert))
        return prod, chal

    def summary(self) -> dict[str, Any]:
        """Counts over every sample seen (not only the kept records)."""
        n = max(self._n, 1)
        return {
            "samples": self._n,
            "production_versions": self.production.model_versions,
            "challenger_versions": self.challenger.model_versions,
            "alerts": dict(self._alerts),
            "mean_composite": {k: v / n for k, v in self._sum.items()},
            "alert_disagreements": self._disagree,
        }
