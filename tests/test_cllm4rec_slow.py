"""CLLM4Rec against the real default backbone (SmolLM2-135M GGUF, cached as an HF folder)."""

from __future__ import annotations

import pytest
import torch

from models.cllm4rec.backbone import BackboneConfig, load_backbone
from models.cllm4rec.prompts import Template
from models.cllm4rec.tokens import IdTokenizer

pytestmark = pytest.mark.slow


def test_smollm2_tokens_and_template() -> None:
    model, hf_tok = load_backbone(BackboneConfig())
    assert not any(p.requires_grad for p in model.parameters())
    tok = IdTokenizer(hf_tok, num_users=943, num_items=1682)
    n = len(hf_tok)
    assert n == model.get_input_embeddings().weight.shape[0] == 49152
    demo = "Hello, user_1! Have you seen item_2?"
    ids = tok.encode(demo)
    assert ids[ids.index(n + 1) + 1 :][-2:] == [n + 943 + 2, hf_tok.convert_tokens_to_ids("?")]
    assert tok.decode(ids) == demo
    tmpl = Template.build(tok)
    assert tok.decode([n + 3, *tmpl.has_interacted]) == "user_3 has interacted with"
    with torch.no_grad():
        out = model(input_ids=torch.tensor([tok.words("The capital of France is")])).logits
    assert hf_tok.decode(out[0, -1].argmax()).strip() == "Paris"
