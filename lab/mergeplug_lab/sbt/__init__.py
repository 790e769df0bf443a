"""Compact time-series Transformer (dense and sparse-binary) for classification, anomaly detection and
single-step forecasting of multivariate series (the sparse-binary-transformer tasks)."""
