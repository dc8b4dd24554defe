"""Tiny random-initialised backbones and MovieLens-format data, for tests (ours and the
exporter's): a byte-level BPE tokenizer trained on a few sentences, a 2-layer Llama or GPT-2,
and a folder in the ml-100k atomic layout that `load_ml100k(path)` reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CORPUS = [
    "Hello, user_1! Have you seen item_2?",
    "user has interacted with item, user will interact with",
    "item is the movie: Toy Story (1995), genres: Animation, Children, Comedy",
    "user wrote the following review for item: a great movie, I liked it.",
    "The quick brown fox jumps over the lazy dog. Drama Thriller Action Romance 1990 1999 2000",
]


def tiny_tokenizer(vocab_size: int = 300) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def tiny_backbone(folder: Path, arch: str = "llama", hidden: int = 32, seed: int = 0) -> Path:
    """Saves a tiny random causal LM + tokenizer as an ordinary HF folder."""
    torch.manual_seed(seed)
    tok = tiny_tokenizer()
    n = len(tok)
    if arch == "llama":
        cfg = LlamaConfig(
            hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
            intermediate_size=2 * hidden, vocab_size=n, max_position_embeddings=512, tie_word_embeddings=True,
            pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        )
        model = LlamaForCausalLM(cfg)
    elif arch == "gpt2":
        cfg = GPT2Config(n_layer=2, n_embd=hidden, n_head=2, vocab_size=n, n_positions=512,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        model = GPT2LMHeadModel(cfg)
    else:
        raise ValueError(f"unknown arch {arch!r}; accepted: llama, gpt2")
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def tiny_ml_folder(folder: Path, users: int = 12, items: int = 20, seed: int = 0) -> Path:
    """A MovieLens-100K-shaped data set in RecBole's atomic layout (ml-100k.inter / .item)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    t = 0
    for u in range(1, users + 1):
        # two taste groups so there is something to learn
        pool = np.arange(1, items // 2 + 1) if u % 2 else np.arange(items // 2 + 1, items + 1)
        n = int(rng.integers(5, len(pool) + 1))
        for i in rng.choice(pool, n, replace=False):
            t += 1
            lines.append(f"{u}\t{i}\t{int(rng.integers(1, 6))}\t{t}")
    (folder / "ml-100k.inter").write_text("\n".join(lines) + "\n")
    genres = ["Drama", "Comedy", "Action", "Thriller"]
    ilines = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"]
    for i in range(1, items + 1):
        ilines.append(f"{i}\tMovie {i}\t{1990 + i % 10}\t{genres[i % 4]} {genres[(i + 1) % 4]}")
    (folder / "ml-100k.item").write_text("\n".join(ilines) + "\n")
    return folder
