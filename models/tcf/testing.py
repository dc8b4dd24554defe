"""Tiny, self-made assets for tests: a random-initialised text encoder folder and an ml-100k-format data folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

WORDS = ["[PAD]", "[UNK]", "[CLS]", "the", "a", "of", "movie", "story", "night", "day", "love", "war", "star",
         "space", "city", "dark", "light", "king", "queen", "river", "drama", "comedy", "action", "thriller",
         "romance", "horror", "genres", "(", ")", ",", ":", "1995", "1996", "1997", "1998", "The", "Love", "War"]


def write_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok.save(str(folder / "tokenizer.json"))


def write_tiny_encoder(folder: Path, kind: str = "bert", layers: int = 3, hidden: int = 32, seed: int = 0) -> Path:
    """A random-initialised HF model (BERT or Llama) + tokenizer.json, saved like any local encoder."""
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaModel

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "bert":
        model = BertModel(BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                                     intermediate_size=2 * hidden, vocab_size=len(WORDS), pad_token_id=0,
                                     max_position_embeddings=64))
    elif kind == "llama":
        model = LlamaModel(LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                                       num_key_value_heads=2, intermediate_size=2 * hidden, vocab_size=len(WORDS),
                                       pad_token_id=0, max_position_embeddings=64))
    else:
        raise ValueError(f"kind must be bert or llama, not {kind!r}")
    model.save_pretrained(folder)
    write_tokenizer(folder)
    return folder


def tiny_texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    content = WORDS[3:20]
    genres = ["drama", "comedy", "action", "thriller", "romance", "horror"]
    return [f"{' '.join(rng.choice(content, size=rng.integers(1, 5)))} ( {rng.choice(['1995', '1997'])} ) , "
            f"genres : {' , '.join(rng.choice(genres, size=rng.integers(1, 3), replace=False))}" for _ in range(n)]


def write_tiny_ml100k(folder: Path, users: int = 40, items: int = 30, per_user: int = 12, seed: int = 0) -> Path:
    """ml-100k atomic files (ml-100k.inter / ml-100k.item) with two taste groups, so there is signal to learn."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    half = items // 2
    for u in range(1, users + 1):
        pool = np.arange(1, half + 1) if u % 2 else np.arange(half + 1, items + 1)
        chosen = rng.choice(pool, size=min(per_user, len(pool)), replace=False)
        lines += [f"{u}\t{i}\t4\t{1000 * u + t}" for t, i in enumerate(chosen)]
    (folder / "ml-100k.inter").write_text("\n".join(lines) + "\n")
    texts = tiny_texts(items, seed)
    ilines = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"]
    for j in range(1, items + 1):
        genre = "drama" if j <= half else "comedy"
        ilines.append(f"{j}\t{texts[j - 1].split(' ( ')[0]}\t199{5 + j % 3}\t{genre}")
    (folder / "ml-100k.item").write_text("\n".join(ilines) + "\n")
    return folder
