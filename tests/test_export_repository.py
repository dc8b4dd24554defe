"""Version numbering, atomic publication and completeness checks of repository/versions.py (torch-free)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import repository.arrays as A
import repository.versions as R
from export.provenance import checkpoint_sha256
from repository.errors import VersionError
from repository.manifest import FORMAT_VERSION, Manifest


def manifest_for(tmp, files):
    return Manifest.from_dict({
        "format_version": FORMAT_VERSION,
        "name": "m",
        "version": None,
        "kind": "tcf",
        "user_tower": "dssm",
        "item_tower": "text",
        "dim": 2,
        "metric": "inner_product",
        "num_items": 1,
        "num_users": 0,
        "capabilities": {},
        "files": {n: {"sha256": e.sha256, "bytes": e.bytes} for n, e in R.file_entries(tmp, files).items()},
        "index": {"type": "flat"},
        "encoders": {},
        "parity": {},
        "source": {},
    })


def publish_one(model_dir, payload: bytes = b"x"):
    with R.staging_folder(model_dir) as tmp:
        (tmp / "a.bin").write_bytes(payload)
        return R.publish(tmp, model_dir, manifest_for(tmp, ["a.bin"]))


def test_versions_count_up_and_ignore_junk(tmp_path):
    model = tmp_path / "m"
    for junk in ("latest", ".tmp-crashed", "007", "-1", "x2"):
        (model / junk).mkdir(parents=True)
    (model / "9").write_text("a file, not a version")
    paths = [publish_one(model, bytes([i])) for i in range(3)]
    assert [p.name for p in paths] == ["1", "2", "3"]
    assert R.list_versions(model) == [1, 2, 3]
    assert [json.loads((p / "manifest.json").read_text())["version"] for p in paths] == [1, 2, 3]
    assert not [p for p in model.iterdir() if p.name.startswith(".tmp-") and p.name != ".tmp-crashed"]
    assert R.latest_complete_version(model)[0] == 3


def test_verify_version_detects_tampering_and_missing_files(tmp_path):
    v = publish_one(tmp_path / "m", b"hello")
    assert R.verify_version(v).version == 1
    (v / "a.bin").write_bytes(b"hellO")
    with pytest.raises(VersionError, match="sha256"):
        R.verify_version(v)
    (v / "a.bin").write_bytes(b"hello!")
    with pytest.raises(VersionError, match="bytes"):
        R.verify_version(v)
    (v / "a.bin").unlink()
    with pytest.raises(VersionError, match=r"a\.bin is missing"):
        R.verify_version(v)
    (v / "manifest.json").unlink()
    with pytest.raises(VersionError, match=r"no manifest\.json"):
        R.verify_version(v)


def test_verify_version_refuses_unknown_format(tmp_path):
    v = publish_one(tmp_path / "m")
    m = json.loads((v / "manifest.json").read_text())
    m["format_version"] = 99
    (v / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(VersionError, match="format_version 99"):
        R.verify_version(v)
    del m["files"]
    (v / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(VersionError, match="missing key"):
        R.verify_version(v)


def test_exception_while_staging_leaves_nothing(tmp_path):
    model = tmp_path / "m"
    with pytest.raises(RuntimeError, match="boom"), R.staging_folder(model) as tmp:
        (tmp / "a.bin").write_bytes(b"x")
        raise RuntimeError("boom")
    assert not model.exists()  # created by the failed export, so removed again
    publish_one(model)
    with pytest.raises(RuntimeError), R.staging_folder(model):
        raise RuntimeError("boom")
    assert sorted(p.name for p in model.iterdir()) == ["1"]


def test_concurrent_exporter_taking_the_number_makes_us_retry(tmp_path, monkeypatch):
    model = tmp_path / "m"
    publish_one(model)
    real_rename = os.rename
    raced = []

    def rename(src, dst):
        if not raced:  # another exporter publishes the same number first
            raced.append(dst)
            os.makedirs(dst)
            with open(os.path.join(dst, "manifest.json"), "w") as f:
                f.write("{}")
        return real_rename(src, dst)

    monkeypatch.setattr(R.os, "rename", rename)
    v = publish_one(model)
    assert raced[0].name == "2" and v.name == "3"
    assert json.loads((v / "manifest.json").read_text())["version"] == 3
    R.verify_version(v)


def test_user_history_csr_round_trip(tmp_path):
    hist = [np.array([3, 1]), np.array([], dtype=np.int64), np.array([0, 2, 4])]
    A.write_user_history(tmp_path / "h.npz", hist)
    indptr, indices = A.read_user_history(tmp_path / "h.npz")
    assert indptr.tolist() == [0, 2, 2, 5]
    assert [indices[indptr[u] : indptr[u + 1]].tolist() for u in range(3)] == [[3, 1], [], [0, 2, 4]]


def test_checkpoint_hash_covers_config_and_weights(tmp_path):
    (tmp_path / "config.json").write_text('{"kind": "tcf"}')
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 100)
    h1, n = checkpoint_sha256(tmp_path)
    assert n == 2
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "state.safetensors").write_bytes(b"optimizer")
    (tmp_path / "train" / "log.json").write_text("{}")
    assert checkpoint_sha256(tmp_path) == (h1, 2)  # training state and log are not part of the identity
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 99 + b"\1")
    assert checkpoint_sha256(tmp_path)[0] != h1
