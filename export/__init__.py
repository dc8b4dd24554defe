"""Checkpoint -> one version of a model repository (ONNX graphs + FAISS index + manifest).

The format itself (file names, the typed manifest, publication, the journal) belongs to the torch-free
`repository` package, which the server reads through; everything here is for the exporting side only
and may import torch and the models.
"""
