"""Offline side: data, splits, metrics, baselines, and the two models' trainers."""
