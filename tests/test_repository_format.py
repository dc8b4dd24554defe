"""The model-repository format as one package owns it (repository/): the typed manifest, the model-kind
registry both sides use, version names, and paths confined to the version folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from repo_fixtures import write_cllm4rec, write_tcf

from repository.errors import VersionError
from repository.files import is_version_name
from repository.kinds import KINDS
from repository.manifest import Manifest, read_manifest
from repository.reader import load_files
from repository.versions import list_versions, scan
from server.adapters import ADAPTERS


def _raw(version_dir: Path) -> dict:
    return json.loads((version_dir / "manifest.json").read_text())


def test_every_model_kind_has_a_request_adapter_and_no_adapter_serves_an_unknown_kind() -> None:
    assert set(ADAPTERS) == set(KINDS)


@pytest.mark.parametrize("kind", ["cllm4rec", "tcf"])
def test_an_exported_manifest_reads_and_writes_back_unchanged(tmp_path: Path, kind: str) -> None:
    from export.config import ExportConfig
    from export.testing import tiny_bundle
    from export.writer import export_bundle

    raw = _raw(export_bundle(tiny_bundle(kind, tmp_path), tmp_path / "repo", "m", ExportConfig()))
    raw["exporter_note"] = {"any": "informational key"}  # readers ignore keys they do not know, and keep them
    assert Manifest.from_dict(raw).to_dict() == raw


@pytest.mark.parametrize("write", [write_cllm4rec, lambda repo: write_tcf(repo, user_tower="sasrec"),
                                   lambda repo: write_tcf(repo, user_tower="dssm")], ids=["cllm4rec", "sasrec", "dssm"])
def test_a_hand_written_manifest_reads_with_the_defaults_filled_in(tmp_path: Path, write) -> None:
    m = Manifest.from_dict(_raw(write(tmp_path).path))
    assert Manifest.from_dict(m.to_dict()) == m


def test_typed_sections_are_what_the_server_reads(tmp_path: Path) -> None:
    m = read_manifest(write_cllm4rec(tmp_path, max_history=7).path)
    assert m.cllm4rec is not None and m.tcf is None
    assert m.cllm4rec.max_history == 7 and m.cllm4rec.template[0] == {"user": True}
    assert m.capabilities.history and m.encoders["user_encoder"].input_names == ["input_ids", "attention_mask"]


@pytest.mark.parametrize(("change", "message"), [
    ({"dim": "8"}, "'dim' must be an integer"),
    ({"dim": True}, "'dim' must be an integer"),
    ({"capabilities": {"history": "yes"}}, "capabilities: 'history' must be a boolean"),
    ({"index": {"type": "annoy"}}, "index type 'annoy'; accepted: flat, ivf, hnsw, ivfpq"),
    ({"kind": "bert4rec"}, "model kind/user tower bert4rec/lm is not known; accepted: cllm4rec/lm"),
    ({"item_tower": "text"}, "item tower 'text' is not known for cllm4rec/lm; accepted: id"),
    ({"metric": "cosine"}, "metric 'cosine'; only inner_product is served"),
    ({"cllm4rec": {"vocab_size": 10}}, "cllm4rec: missing key 'user_token_offset'"),
    ({"encoders": {"user_encoder": {"path": "../../elsewhere.onnx"}}}, "points outside the version folder"),
    ({"encoders": {"user_encoder": {"path": "/etc/passwd"}}}, "points outside the version folder"),
])
def test_a_bad_manifest_is_refused_in_one_line_naming_the_field(tmp_path: Path, change: dict, message: str) -> None:
    raw = _raw(write_cllm4rec(tmp_path).path)
    raw.update(change)
    with pytest.raises(VersionError, match=message) as err:
        Manifest.from_dict(raw, "m/1/manifest.json")
    assert "\n" not in str(err.value) and str(err.value).startswith("m/1/manifest.json")


def test_paths_from_the_tcf_section_and_references_stay_in_the_version_folder(tmp_path: Path) -> None:
    raw = _raw(write_tcf(tmp_path, user_tower="sasrec").path)
    for section, key, value in (("tcf", "tokenizer", "../../../secrets.json"), ("tcf", "id_part", "/tmp/x.npy")):
        bad = json.loads(json.dumps(raw))
        bad[section][key] = value
        with pytest.raises(VersionError, match=f"tcf.{key}: .* points outside the version folder"):
            Manifest.from_dict(bad)
    bad = json.loads(json.dumps(raw))
    bad["encoders"]["user_encoder"]["reference"] = {"file": "../other/reference.npz"}
    with pytest.raises(VersionError, match=r"reference\.file: .* points outside"):
        Manifest.from_dict(bad)


def test_version_names_are_ascii_positive_integers() -> None:
    assert [n for n in ("1", "12", "01", "0", "-1", "²", "١", "1.0", " 1", "x") if is_version_name(n)] == ["1", "12"]


def test_a_junk_folder_is_skipped_for_its_model_alone(tmp_path: Path) -> None:
    write_cllm4rec(tmp_path, name="a")
    write_tcf(tmp_path, name="b", user_tower="sasrec")
    for junk in ("²", "007", "latest"):
        (tmp_path / "a" / junk).mkdir()
    (tmp_path / "b" / "٣").mkdir()
    assert list_versions(tmp_path / "a") == [1]
    assert scan(tmp_path) == {"a": [1], "b": [1]}
    assert load_files(tmp_path / "a" / "1").manifest.kind == "cllm4rec"


def test_a_model_without_user_tokens_reads_a_known_user_as_the_anonymous_one(tmp_path: Path) -> None:
    from server.adapters.cllm4rec_lm import Cllm4recPrompt

    raw = _raw(write_cllm4rec(tmp_path).path)
    with_users = Cllm4recPrompt(tmp_path, Manifest.from_dict(raw))
    c = raw["cllm4rec"]
    assert with_users.payload(2, [0], lambda r: r)[0] == c["user_token_offset"] + 2
    c["user_token_offset"] = c["item_token_offset"]  # as `llmrec train cllm4rec --model.no-user-tokens` exports
    without = Cllm4recPrompt(tmp_path, Manifest.from_dict(raw))
    prompt = without.payload(2, [0], lambda r: r)
    assert prompt[0] == c["anonymous_user_token"] and prompt == without.payload(None, [0], lambda r: r)
