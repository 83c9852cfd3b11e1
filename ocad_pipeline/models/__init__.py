"""Training-side model definitions and their pickle-free numpy exports.

The online package (``ocad_detectors``) never imports torch or scikit-learn, so every model
trained here is exported to plain float/int arrays that ``ocad_detectors.tcn`` and
``ocad_detectors.iforest`` evaluate with numpy only. Submodules are imported explicitly
(``ocad_pipeline.models.tcn_torch``, ``ocad_pipeline.models.iforest_export``) so that using one
does not pay for importing the other's framework.
"""
