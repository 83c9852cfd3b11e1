"""OCAD online side: inference-only detectors, the shared feature engine and the model registry reader."""
