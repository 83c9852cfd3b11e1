"""torch / scikit-learn fitters for ``tests/model_fixtures.build_model_registry`` (benchmarks only).

The test fixtures fit in numpy; the detector benchmark compares the numpy runtimes against the
originals, so it builds its registry with these fitters, which hand back the fitted
``TCNForecaster`` / ``IsolationForest`` next to their exported arrays. Both exports go through
the same artifact contract as the trainers'.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ocad_detectors.artifacts import TCNArchitecture


def fit_tcn_torch(X: np.ndarray, y: np.ndarray, arch: TCNArchitecture, epochs: int, seed: int) -> tuple[dict[str, np.ndarray], Any]:
    """A TCNForecaster trained with Adam on the scaled windows; returns (exported weights, module)."""
    import torch

    from ocad_pipeline.models.tcn_torch import TCNForecaster, export_tcn

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    x = torch.tensor(X, dtype=torch.float32)
    t = torch.tensor(y, dtype=torch.float32)
    model = TCNForecaster(arch.seq_len, arch.hidden_channels, arch.dilations, arch.kernel_size, dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 256):
            b = perm[i : i + 256]
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x[b]), t[b])
            loss.backward()
            opt.step()
    model.eval()
    return export_tcn(model), model


def fit_forest_sklearn(X: np.ndarray, n_trees: int, max_samples: int | str, seed: int) -> tuple[dict[str, np.ndarray], Any]:
    """An sklearn IsolationForest on the scaled features; returns (exported arrays, forest)."""
    from sklearn.ensemble import IsolationForest

    from ocad_pipeline.models.iforest_export import export_isolation_forest

    forest = IsolationForest(n_estimators=n_trees, max_samples=max_samples, random_state=seed).fit(X)
    return export_isolation_forest(forest), forest
