"""Thresholds: per-embedder defaults, calibration on the gallery itself, FAR/FRR curves and their metrics."""
