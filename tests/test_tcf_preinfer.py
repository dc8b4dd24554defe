"""Pre-inference cache, the top-N split of the LM and item-row alignment (tiny random encoders)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from models.tcf import preinfer as pi
from models.tcf import text_encoder as te
from models.tiny import tiny_texts, write_encoder
from models.training.capacity import CapacityConfig


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_encoder(tmp_path_factory.mktemp("bert"), "bert")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_encoder(tmp_path_factory.mktemp("llama"), "llama")


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = pi.run_frozen_part

    def wrapper(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(pi, "run_frozen_part", wrapper)
    return calls


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _cfg(folder: Path, **kw) -> te.TextEncoderConfig:
    return te.TextEncoderConfig(encoder=str(folder), **kw)


FROZEN = CapacityConfig()


def test_cache_reused_then_invalidated(tmp_path: Path, bert_dir: Path, counted: list[int]) -> None:
    texts = tiny_texts(10)
    cache = tmp_path / "cache"
    first = pi.preinfer(_cfg(bert_dir), FROZEN, texts, cache, progress=False)
    again = pi.preinfer(_cfg(bert_dir), FROZEN, texts, cache, progress=False)
    assert len(counted) == 1 and not first.from_cache and again.from_cache
    assert torch.equal(first.pooled, again.pooled)
    keys = {first.key}
    for cfg, lm_cfg, tx in [
        (_cfg(bert_dir), FROZEN, [*texts[:-1], "war day"]),  # text changed
        (_cfg(bert_dir), CapacityConfig(unfreeze_top=1), texts),  # N changed
        (_cfg(bert_dir), CapacityConfig(depth=2), texts),  # depth changed
        (_cfg(bert_dir, max_length=4), FROZEN, texts),  # max length changed
        (_cfg(bert_dir, lowercase=True), FROZEN, texts),  # lower-casing changed
        (_cfg(bert_dir, pooling="cls"), FROZEN, texts),  # pooling changed
    ]:
        res = pi.preinfer(cfg, lm_cfg, tx, cache, progress=False)
        assert not res.from_cache
        keys.add(res.key)
    assert len(keys) == 7 and len(counted) == 7
    weights = bert_dir / "model.safetensors"
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched, same content: still cached
    assert pi.preinfer(_cfg(bert_dir), FROZEN, texts, cache, progress=False).from_cache
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # new weights at the same path
    weights.write_bytes(bytes(data))
    assert not pi.preinfer(_cfg(bert_dir), FROZEN, texts, cache, progress=False).from_cache
    assert len(counted) == 8


def test_max_length_truncates(bert_dir: Path) -> None:
    tok = te.load_tokenizer(bert_dir, 3, False)
    ids, mask = te.tokenize(tok, ["the movie of the night", "war"])
    assert ids.shape == (2, 3) and mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_lowercase_in_tokenizer(bert_dir: Path) -> None:
    """The same function is used everywhere; lower-casing lives in the tokenizer's normalizer."""
    plain, lower = te.load_tokenizer(bert_dir, 8, False), te.load_tokenizer(bert_dir, 8, True)
    assert te.tokenize(plain, ["The War"])[0].tolist() != te.tokenize(lower, ["The War"])[0].tolist()
    assert te.tokenize(lower, ["The War"])[0].tolist() == te.tokenize(plain, ["the war"])[0].tolist()


@pytest.mark.parametrize("kind", ["bert", "llama"])
@pytest.mark.parametrize("n", [1, 2])
def test_top_layers_continue_the_frozen_part(tmp_path: Path, kind: str, n: int, request) -> None:
    """top_N(hidden states entering layer L-N) == the full model's output at every real token."""
    folder = request.getfixturevalue(f"{kind}_dir")
    texts = tiny_texts(6, seed=1)
    pre = pi.preinfer(_cfg(folder), CapacityConfig(unfreeze_top=n), texts, tmp_path, progress=False)
    lm = te.load_lm(folder)
    top = te.top_layers(lm, n)
    got = top(inputs_embeds=pre.hidden, attention_mask=pre.mask).last_hidden_state
    ids, mask = te.tokenize(te.load_tokenizer(folder, 32, False), texts)
    want = lm(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    assert torch.allclose(got[real], want[real], atol=1e-5)
    # the top view shares modules: changing it changes the full model
    first_top = next(p for n_, p in top.named_parameters())
    with torch.no_grad():
        first_top.add_(1.0)
    assert any(p is first_top for p in lm.parameters())


def test_top_layers_rejects_bad_n(bert_dir: Path) -> None:
    lm = te.load_lm(bert_dir)
    with pytest.raises(ValueError, match=r"unfreeze_top must be in 1\.\.3"):
        te.top_layers(lm, 4)


def test_item_rows_follow_text_order(tmp_path: Path, bert_dir: Path) -> None:
    """Permuting the catalogue permutes the pre-inferred rows the same way (no misalignment)."""
    texts = tiny_texts(8, seed=2)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(0)).tolist()
    a = pi.preinfer(_cfg(bert_dir), FROZEN, texts, tmp_path, progress=False, batch_size=3)
    b = pi.preinfer(_cfg(bert_dir), FROZEN, [texts[i] for i in perm], tmp_path, progress=False, batch_size=5)
    assert not b.from_cache
    assert torch.allclose(b.pooled, a.pooled[perm], atol=1e-5)


def test_unknown_encoder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="accepted are 'minilm', 'smollm2'"):
        te.resolve_encoder_dir(str(tmp_path / "nope"))
