"""The top-N split on the real item encoders (MiniLM, SmolLM2): slow, loads real weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.tcf import text_encoder as te
from models.tcf.preinfer import preinfer
from models.training.capacity import CapacityConfig

TEXTS = ["Toy Story (1995), genres: Animation, Children's, Comedy",
         "GoldenEye (1995), genres: Action, Adventure, Thriller",
         "Heat (1995), genres: Action, Crime, Thriller",
         "Twelve Monkeys (1995), genres: Drama, Sci-Fi"]


@pytest.mark.slow
@pytest.mark.parametrize("encoder", ["minilm", "smollm2"])
def test_top_layer_split_on_real_encoder(tmp_path: Path, encoder: str) -> None:
    torch.set_num_threads(1)
    cfg = te.TextEncoderConfig(encoder=encoder)
    folder = te.resolve_encoder_dir(encoder)
    lm = te.load_lm(folder)
    pre = preinfer(cfg, CapacityConfig(unfreeze_top=1), TEXTS, tmp_path, progress=False, lm=lm)
    with torch.no_grad():
        split = te.pool(te.top_layers(lm, 1)(inputs_embeds=pre.hidden, attention_mask=pre.mask).last_hidden_state,
                        pre.mask, "mean")
        ids, mask = te.tokenize(te.load_tokenizer(folder, cfg.max_length, cfg.lowercase), TEXTS)
        full = te.pool(lm(input_ids=ids, attention_mask=mask).last_hidden_state, mask, "mean")
    assert torch.allclose(split, full, rtol=1e-4, atol=1e-4 * float(full.abs().max()))
    frozen = preinfer(te.TextEncoderConfig(encoder=encoder), CapacityConfig(), TEXTS, tmp_path, progress=False, lm=lm)
    assert torch.allclose(frozen.pooled, full, rtol=1e-4, atol=1e-4 * float(full.abs().max()))
