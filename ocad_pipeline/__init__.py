"""OCAD offline side: the Dagster training pipeline (``pip install 'ocad[train]'``).

Importing this package is light; its modules need the training stack (torch, scikit-learn,
optuna, pandera, dagster) that the ``train`` extra installs. It may import ``ocad_detectors``,
never the reverse.
"""

from ocad_detectors import __version__

__all__ = ["__version__"]
