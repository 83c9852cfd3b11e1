"""The online package stays thin: no torch, scikit-learn, dagster (or pandas when streaming)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from model_fixtures import cached_model_registry

HEAVY = ("torch", "sklearn", "dagster", "scipy", "pandas")


def _run(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_streaming_with_all_models_imports_no_heavy_library():
    built = cached_model_registry()
    out = _run(
        f"""
        import sys
        import ocad_detectors
        from ocad_detectors.pipeline import DetectionPipeline
        from ocad_detectors.samples import Sample
        p = DetectionPipeline(model_dir={str(built.root)!r})
        assert all(v is not None for v in p.model_versions.values()), p.model_versions
        t = 1_767_225_600_000
        for i in range(40):
            for ep in ("o-ru-001", "o-du-001", "transport-001", "someone-new"):
                r = p.process(Sample(t + 5000 * i, ep, 5.0 + (i % 3), 100.0 + i, 8.0, i % 7 != 0))
                assert r.status == "ok", r
        assert r.scores["residual"] > 0 and r.scores["multivariate"] > 0
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})
        print("HEAVY", heavy)
        """
    )
    assert "HEAVY []" in out, out


def test_batch_scoring_imports_pandas_but_no_training_library():
    built = cached_model_registry()
    out = _run(
        f"""
        import sys
        import pandas as pd
        from ocad_detectors.pipeline import DetectionPipeline
        f = pd.DataFrame({{"timestamp_ms": [1, 2, 3], "endpoint_id": ["a", "a", "a"], "udp_echo_rtt_ms": [5.0, 6.0, None]}})
        r = DetectionPipeline(model_dir={str(built.root)!r}).score_frame(f)
        assert list(r.status) == ["ok"] * 3
        print("HEAVY", sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "sklearn", "dagster")))
        """
    )
    assert "HEAVY []" in out, out
