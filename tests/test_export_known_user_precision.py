"""The known-user pass in bf16 (issue #33, export on CPUs that multiply bf16 natively): chosen from the
CPU flags (mocked here), adopted only when its vectors pass the gate against fp32, and recorded in the
manifest; refused, it leaves the fp32 vectors exactly as before."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from export import writer
from export.cli import write_export_report
from export.config import ExportConfig, GraphConfig, UserVectorsConfig
from export.testing import tiny_bundle
from export.user_vectors import OrtBatchFn, pass_precision
from export.writer import export_bundle
from repository import files as F

NATIVE = frozenset({"fpu", "avx512f", "avx512_bf16"})


def _cfg(precision: str, **kw: float) -> ExportConfig:
    return ExportConfig(graph=GraphConfig(ort_optimize="none"), report=False,
                        user_vectors=UserVectorsConfig(shard_size=10, batch_size=5, precision=precision,  # type: ignore[arg-type]
                                                       check_users=8, **kw))


def _known(version: Path) -> dict:
    return json.loads((version / F.MANIFEST).read_text())["known_users"]


def test_pass_precision_follows_the_cpu_flags() -> None:
    assert pass_precision("auto", NATIVE, openvino=True)[0] == "bf16"
    assert pass_precision("auto", frozenset({"amx_bf16"}), openvino=True) == (
        "bf16", "auto: amx_bf16 on this CPU and OpenVINO installed")
    assert pass_precision("auto", frozenset({"avx2", "avx512f"}), openvino=True)[0] == "fp32"
    assert pass_precision("auto", NATIVE, openvino=False) == ("fp32", "auto: native bf16 but OpenVINO is not installed")
    assert pass_precision("fp32", NATIVE, openvino=True)[0] == "fp32"
    assert pass_precision("bf16", NATIVE, openvino=True)[0] == "bf16"
    with pytest.raises(ValueError, match="no native bf16"):
        pass_precision("bf16", frozenset({"avx2"}), openvino=True)
    with pytest.raises(ValueError, match="OpenVINO"):
        pass_precision("bf16", NATIVE, openvino=False)
    with pytest.raises(ValueError, match="accepted: auto, fp32, bf16"):
        pass_precision("int8", NATIVE, openvino=True)


class _Scaled(OrtBatchFn):
    """Stands in for OpenVINO bf16: the fp32 graph's vectors times 1.001, which keeps every ranking."""

    engine, precision = "fake-bf16", "bf16"

    def _run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return super()._run(feeds) * np.float32(1.001)


class _Noise(OrtBatchFn):
    """Stands in for a bf16 engine that loses the ranking: random vectors."""

    engine, precision = "fake-bf16", "bf16"

    def _run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        got = super()._run(feeds)
        return np.random.default_rng(len(got)).standard_normal(got.shape).astype(np.float32)


@pytest.fixture
def native_bf16(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setattr(writer, "machine_cpu_flags", lambda: NATIVE)
    monkeypatch.setattr(writer, "openvino_installed", lambda: True)
    return monkeypatch


def test_bf16_pass_within_the_gate_is_adopted_and_recorded(tmp_path: Path, native_bf16: pytest.MonkeyPatch) -> None:
    native_bf16.setattr(writer, "OvBf16BatchFn", _Scaled)
    reference = tiny_bundle("cllm4rec", tmp_path / "ref").user_vectors
    version = export_bundle(tiny_bundle("cllm4rec", tmp_path / "b", lazy_users=True), tmp_path / "repo", "m",
                            _cfg("auto"))
    known = _known(version)
    compute, gate = known["compute"], known["compute"]["quality"]
    assert compute["engine"] == "fake-bf16" and compute["precision"] == "bf16"
    assert compute["decided"] == "auto: avx512_bf16 on this CPU and OpenVINO installed"
    assert gate["status"] == "accepted" and gate["top20_overlap"] == 1.0 and gate["rows"] == 8
    assert gate["probe_users"] == 25 and gate["relative_drop"] == pytest.approx(0.0, abs=1e-9)
    assert gate["users_timed"] == 25 and gate["fp32_seconds"] > 0 and gate["bf16_seconds"] > 0
    # the served vectors are the adopted engine's, for every user (the gate's users are not reused)
    np.testing.assert_allclose(np.load(version / F.USER_VECTORS), reference * 1.001, rtol=1e-5, atol=1e-6)
    native_bf16.chdir(tmp_path)  # the export report goes to ./llmrec-results
    md = write_export_report(version, _cfg("auto")).with_suffix(".md").read_text()
    assert "Known-user pass: bf16 on fake-bf16 (auto: avx512_bf16" in md and "bf16 gate accepted" in md


def test_bf16_pass_outside_the_gate_is_refused_and_fp32_serves(tmp_path: Path, native_bf16: pytest.MonkeyPatch) -> None:
    native_bf16.setattr(writer, "OvBf16BatchFn", _Noise)
    reference = tiny_bundle("cllm4rec", tmp_path / "ref").user_vectors
    with pytest.warns(UserWarning, match="bf16 refused"):
        version = export_bundle(tiny_bundle("cllm4rec", tmp_path / "b", lazy_users=True), tmp_path / "repo", "m",
                                _cfg("bf16"))
    compute = _known(version)["compute"]
    assert compute["engine"] == "onnxruntime-cpu" and compute["precision"] == "fp32"
    assert compute["quality"]["status"] == "refused" and "overlap" in compute["quality"]["reason"]
    np.testing.assert_allclose(np.load(version / F.USER_VECTORS), reference, atol=1e-5)


def test_shards_of_one_precision_are_never_reused_by_the_other(tmp_path: Path, native_bf16: pytest.MonkeyPatch) -> None:
    native_bf16.setattr(writer, "OvBf16BatchFn", _Scaled)
    bundle = tiny_bundle("cllm4rec", tmp_path / "b", lazy_users=True)
    bundle.known_user_inputs.fail_after = 3  # type: ignore[union-attr]
    with pytest.raises(KeyboardInterrupt):  # 25 users, 5 per batch; the fp32 pass dies in its second shard
        export_bundle(bundle, tmp_path / "repo", "m", _cfg("fp32"))
    bundle.known_user_inputs.fail_after = None  # type: ignore[union-attr]
    version = export_bundle(bundle, tmp_path / "repo", "m", _cfg("auto"))
    reference = tiny_bundle("cllm4rec", tmp_path / "ref").user_vectors
    np.testing.assert_allclose(np.load(version / F.USER_VECTORS), reference * 1.001, rtol=1e-5, atol=1e-6)


def test_bf16_asked_on_a_cpu_without_it_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer, "machine_cpu_flags", lambda: frozenset({"avx2"}))
    with pytest.raises(ValueError, match="no native bf16"):
        export_bundle(tiny_bundle("cllm4rec", tmp_path / "b", lazy_users=True), tmp_path / "repo", "m", _cfg("bf16"))
    assert not (tmp_path / "repo" / "m").exists()  # refused before anything was exported or written
    fp32 = export_bundle(tiny_bundle("cllm4rec", tmp_path / "c", lazy_users=True), tmp_path / "repo", "m", _cfg("auto"))
    assert _known(fp32)["compute"] == {"engine": "onnxruntime-cpu", "precision": "fp32",
                                       "decided": "auto: no native bf16 on this CPU"}


@pytest.mark.skipif(not (writer.machine_cpu_flags() & {"amx_bf16", "avx512_bf16"})
                    or importlib.util.find_spec("openvino") is None,
                    reason="needs a CPU with native bf16 and OpenVINO")
def test_openvino_bf16_pass_on_this_cpu(tmp_path: Path) -> None:
    """The real engine on a CPU that has bf16: whatever the gate decides, the version says so and serves
    vectors of the engine it names."""
    reference = tiny_bundle("cllm4rec", tmp_path / "ref").user_vectors
    version = export_bundle(tiny_bundle("cllm4rec", tmp_path / "b", lazy_users=True), tmp_path / "repo", "m",
                            _cfg("bf16", min_overlap=0.0, max_metric_drop=1.0))
    compute = _known(version)["compute"]
    assert compute["engine"] == "openvino-cpu" and compute["precision"] == "bf16"
    got = np.load(version / F.USER_VECTORS)
    np.testing.assert_allclose(got, reference, rtol=0.05, atol=0.05 * float(np.abs(reference).max()))


def test_the_metric_part_of_the_gate_refuses_a_drop_beyond_its_noise_only() -> None:
    """The export gates (int8, float16, the bf16 pass) refuse on the probe metric only when its drop passes
    the relative limit and two paired SEs, as the server's engine gate does."""
    from export.quantize import _metric_drop

    base = np.r_[np.ones(20), np.zeros(180)]  # 200 probe users, 20 hits
    one_lost = base.copy()
    one_lost[0] = 0.0  # a 5% relative drop that is one user: one SE
    out: dict = {}
    reasons: list[str] = []
    _metric_drop(out, reasons, "recall@20", base, one_lost, "bf16", 0.01)
    assert reasons == [] and out["relative_drop"] == pytest.approx(0.05) and out["changed_users"] == 1
    assert out["drop_se"] == pytest.approx(0.005, rel=0.01)
    half_lost = base.copy()
    half_lost[:10] = 0.0  # ten users: 0.05 lost at an SE of 0.015
    _metric_drop(out, reasons, "recall@20", base, half_lost, "bf16", 0.01)
    assert len(reasons) == 1 and "drops 50.0%" in reasons[0] and "> 2 SE" in reasons[0]
    reasons.clear()
    _metric_drop(out, reasons, "recall@20", base, half_lost, "bf16", 0.6)  # within the relative limit
    assert reasons == []
