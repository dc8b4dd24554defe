"""Checkpoint -> one version of a model repository (ONNX graphs + FAISS index + manifest).

Torch-free modules, safe for the server and the benchmarks to import: `export.manifest`,
`export.repository`, `export.index`. The rest (`onnx_graphs`, `parity`, `quantize`, `writer`,
`cli`, `testing`) import torch and are for the exporting side only.
"""
