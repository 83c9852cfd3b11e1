"""Export a fitted scikit-learn ``IsolationForest`` into flat numpy arrays (no pickle).

``ocad_detectors.iforest.NumpyIsolationForest`` scores with these arrays and reproduces
``IsolationForest.score_samples`` exactly. The details that matter for exactness:

* sklearn traverses trees on ``float32`` input and compares ``float(x32) <= threshold(float64)``;
  NaN goes to the side given by ``missing_go_to_left``.
* when ``max_features`` < n_features every tree was fitted on ``X[:, estimators_features_[i]]``,
  so local feature indices are mapped to global columns here.
* a leaf contributes ``depth(leaf) + c(n_node_samples(leaf)) - 1`` (root depth 1), summed over
  trees in order, and the score is ``-2 ** (-sum / (n_trees * c(max_samples)))``.

Array layout (all trees concatenated, node ids global):

==========================  =========  ====================================================
``feature``                 int64 (N)  global column tested at the node; -1 at leaves
``threshold``               float64    split threshold; NaN at leaves
``left``, ``right``         int64      global child ids; -1 at leaves
``missing_left``            uint8      1 when NaN goes left
``leaf_value``              float64    path-length contribution at leaves; 0 at split nodes
``tree_offsets``            int64 T+1  node id range of tree ``t`` is ``[off[t], off[t+1])``
``n_features``              int64 (1)  number of input columns
``max_samples``             int64 (1)  sub-sample size each tree was grown on
``normalizer``              float64 1  ``c(max_samples)``, the average path length of that size
``offset``                  float64 1  ``offset_`` so ``decision_function = score - offset``
==========================  =========  ====================================================
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.ensemble import IsolationForest

__all__ = ["average_path_length", "export_isolation_forest"]

_EULER_GAMMA = float(np.euler_gamma)


def average_path_length(n_samples: np.ndarray) -> np.ndarray:
    """``c(n)``: average path length of an unsuccessful BST search, as sklearn computes it."""
    n = np.asarray(n_samples, dtype=np.float64)
    out = np.zeros(n.shape)
    out[n == 2] = 1.0
    big = n > 2
    out[big] = 2.0 * (np.log(n[big] - 1.0) + _EULER_GAMMA) - 2.0 * (n[big] - 1.0) / n[big]
    return out


def export_isolation_forest(model: IsolationForest) -> dict[str, np.ndarray]:
    """Flatten a fitted ``IsolationForest`` into the arrays documented in this module."""
    if not hasattr(model, "estimators_"):
        raise ValueError("the IsolationForest is not fitted")
    n_features = int(model.n_features_in_)
    # sklearn only re-indexes columns when fewer than all features were drawn per tree
    max_features = int(getattr(model, "_max_features", len(model.estimators_features_[0])))
    subsample_features = max_features != n_features
    max_samples = int(getattr(model, "_max_samples", model.max_samples_))

    parts: dict[str, list[np.ndarray]] = {
        k: [] for k in ("feature", "threshold", "left", "right", "missing_left", "leaf_value")
    }
    offsets = [0]
    for est, feats in zip(model.estimators_, model.estimators_features_):
        tree: Any = est.tree_
        base = offsets[-1]
        left = np.asarray(tree.children_left, dtype=np.int64)
        right = np.asarray(tree.children_right, dtype=np.int64)
        is_leaf = left == -1
        feature = np.asarray(tree.feature, dtype=np.int64)
        if subsample_features:
            feature = np.where(is_leaf, -1, np.asarray(feats, dtype=np.int64)[np.maximum(feature, 0)])
        else:
            feature = np.where(is_leaf, -1, feature)
        threshold = np.where(is_leaf, np.nan, np.asarray(tree.threshold, dtype=np.float64))
        depths = np.asarray(tree.compute_node_depths(), dtype=np.int64)
        # same operation order as sklearn: (depth + c(n)) - 1.0
        value = depths + average_path_length(np.asarray(tree.n_node_samples)) - 1.0
        missing = getattr(tree, "missing_go_to_left", None)
        missing_left = (
            np.zeros(tree.node_count, np.uint8) if missing is None else np.asarray(missing, np.uint8)
        )
        parts["feature"].append(feature)
        parts["threshold"].append(threshold)
        parts["left"].append(np.where(is_leaf, -1, left + base))
        parts["right"].append(np.where(is_leaf, -1, right + base))
        parts["missing_left"].append(np.where(is_leaf, 0, missing_left).astype(np.uint8))
        parts["leaf_value"].append(np.where(is_leaf, value, 0.0))
        offsets.append(base + int(tree.node_count))

    arrays = {k: np.ascontiguousarray(np.concatenate(v)) for k, v in parts.items()}
    arrays["tree_offsets"] = np.asarray(offsets, dtype=np.int64)
    arrays["n_features"] = np.asarray([n_features], dtype=np.int64)
    arrays["max_samples"] = np.asarray([max_samples], dtype=np.int64)
    arrays["normalizer"] = average_path_length(np.asarray([max_samples]))
    arrays["offset"] = np.asarray([float(model.offset_)], dtype=np.float64)
    return arrays
