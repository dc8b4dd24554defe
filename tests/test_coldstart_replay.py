"""New items served live: upserted by text into a version exported without them, they are recommended
over gRPC exactly as the offline (in-process) evaluation of the same version says."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from repo_fixtures import _finish_manifest, write_tcf

from benchmarks.coldstart import ColdRequest, replay


def _drop_items(version: Path, keep: int) -> list[tuple[str, str, str]]:
    """Rewrites a tiny TCF version with only its first `keep` items; returns the others as new items."""
    import faiss
    import numpy as np

    ids = json.loads((version / "item_ids.json").read_text())
    titles = json.loads((version / "item_titles.json").read_text())
    vecs = np.load(version / "item_vectors.npy")
    new = [(i, t, t) for i, t in zip(ids[keep:], titles[keep:], strict=True)]  # tiny titles are the texts
    (version / "item_ids.json").write_text(json.dumps(ids[:keep]))
    (version / "item_titles.json").write_text(json.dumps(titles[:keep]))
    np.save(version / "item_vectors.npy", vecs[:keep])
    index = faiss.IndexFlatIP(vecs.shape[1])
    index.add(vecs[:keep])
    faiss.write_index(index, str(version / "items.faiss"))
    with np.load(version / "user_history.npz") as h:
        indptr, indices = h["indptr"], h["indices"]
    keepers = [[r for r in indices[indptr[u]:indptr[u + 1]] if r < keep] or [0] for u in range(len(indptr) - 1)]
    np.savez(version / "user_history.npz", indptr=np.cumsum([0] + [len(s) for s in keepers]),
             indices=np.array([r for s in keepers for r in s]))
    manifest = json.loads((version / "manifest.json").read_text())
    manifest.pop("files")
    manifest["num_items"] = keep
    _finish_manifest(version, manifest)
    return new


def test_new_items_over_grpc_hit_exactly_as_offline(tmp_path: Path) -> None:
    model = write_tcf(tmp_path / "repo", name="m", num_items=40)
    new = _drop_items(model.path, keep=30)
    rng = __import__("numpy").random.default_rng(0)
    requests = []
    for n in range(25):  # histories of known items whose next item is a new one
        hist = tuple(f"t{r}" for r in rng.choice(30, size=3, replace=False))
        requests.append(ColdRequest(hist, new[n % len(new)][0]))
    result = replay(tmp_path / "repo", "m", new, requests, k=10)
    assert result["identical_rankings"] and result["offline_hr@10"] == result["grpc_hr@10"]
    assert result["offline_hr@10"] > 0  # new items do get recommended, by their text alone
    assert result["upsert_ms"]["n"] == len(new)
    assert not (tmp_path / "repo-coldstart").exists() and not (tmp_path / "repo" / "m" / "items.journal").exists()
    shutil.rmtree(tmp_path / "repo")
