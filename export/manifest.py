"""Constants of the model-repository format (docs/model-repository.md), shared by writer and reader.

Torch-free on purpose: the server reads versions with these names and must not need PyTorch.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ITEMS_INDEX = "items.faiss"
ITEM_IDS = "item_ids.json"
ITEM_VECTORS = "item_vectors.npy"
ITEM_TITLES = "item_titles.json"
USER_IDS = "user_ids.json"
USER_VECTORS = "user_vectors.npy"
USER_HISTORY = "user_history.npz"
USER_ENCODER = "user_encoder.onnx"
ITEM_ENCODER = "item_encoder.onnx"
TOKENIZER = "tokenizer.json"

INDEX_TYPES = ("flat", "ivf", "hnsw", "ivfpq")
ENCODER_NAMES = ("user_encoder", "item_encoder")
METRIC = "inner_product"
TMP_PREFIX = ".tmp-"

# Keys a reader needs to serve a version; it refuses one missing any of them. (The exporter also
# always writes parity, quantization, source, package_versions and opset: informational for readers.)
REQUIRED_KEYS = (
    "format_version", "name", "version", "kind", "user_tower", "item_tower", "dim", "metric",
    "num_items", "num_users", "capabilities", "files", "index", "encoders",
)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Streams the file so that a 500 MB graph does not have to fit in memory twice."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def is_version_name(name: str) -> bool:
    """Positive integers only ("1", "2", ...); "01", "-1", ".tmp-x" are not versions."""
    return name.isdigit() and not name.startswith("0")
