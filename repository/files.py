"""The names of the files and folders in a model repository (docs/model-repository.md).

    <repository>/<model name>/<version>/manifest.json ...   (version: "1", "2", ...)
    <repository>/<model name>/items.journal

Every module that names a file of a version takes the name from here.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

MANIFEST = "manifest.json"  # written last: its presence marks a complete version
ITEMS_INDEX = "items.faiss"
ITEM_IDS = "item_ids.json"
ITEM_VECTORS = "item_vectors.npy"
ITEM_TITLES = "item_titles.json"
USER_VECTORS = "user_vectors.npy"  # float32 or float16 (manifest `known_users.vectors_dtype`)
# Known users, memory-mapped at serve time (format 2): nothing is read whole, so a replica's memory
# does not grow with the number of users (docs/model-repository.md, "Known users").
USER_ID_KEYS = "user_ids.npy"  # fixed-width UTF-8 bytes, sorted: binary search, no dict of every user
USER_ID_ROWS = "user_id_rows.npy"  # int64: sorted position -> user row
USER_HISTORY_INDPTR = "user_history_indptr.npy"  # int64 [num_users + 1]
USER_HISTORY_INDICES = "user_history_indices.npy"  # int32 item rows
USER_ROWS = "user_rows.npy"  # CLLM4Rec: each known user's collaborative row, then the anonymous row
# Format 1 (still read, whole into memory): a JSON list of ids and one CSR npz.
USER_IDS = "user_ids.json"
USER_HISTORY = "user_history.npz"
USER_ENCODER = "user_encoder.onnx"
ITEM_ENCODER = "item_encoder.onnx"
TOKENIZER = "tokenizer.json"
JOURNAL = "items.journal"  # beside the version folders: one per model, not per version
EXPORT_WORK = ".export-work"  # beside the version folders: resumable known-user shards of an export
TMP_PREFIX = ".tmp-"  # a version being written; readers ignore it

# ASCII digits only: str.isdigit() is also true for "²" or "٣", which int() then rejects or misreads.
_VERSION_NAME = re.compile(r"[1-9][0-9]*")


def encoder_file(role: str) -> str:
    """The ONNX graph of an encoder role ("user_encoder" -> "user_encoder.onnx")."""
    return f"{role}.onnx"


def reference_file(role: str) -> str:
    """PyTorch fp32 reference inputs and outputs of an encoder (repository/reference.py)."""
    return f"reference_{role}.npz"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Streams the file so that a 500 MB graph does not have to fit in memory twice."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def is_version_name(name: str) -> bool:
    """Positive integers written in ASCII without leading zeros ("1", "2", ...); "01", "-1", ".tmp-x" and
    "²" are not versions."""
    return _VERSION_NAME.fullmatch(name) is not None
