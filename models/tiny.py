"""Tiny, self-made assets for tests and smoke runs, in one place: tokenizers, random-initialised
HF models saved as ordinary folders, and a MovieLens-100K-shaped data folder.

Torch and transformers are imported inside the functions that need them, so the torch-free
server tests can build their word-level tokenizers from here too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

# Word-level vocabulary of the tiny text encoders; the special tokens come first ([PAD] = 0).
WORDS = ["[PAD]", "[UNK]", "[CLS]", "the", "a", "of", "movie", "story", "night", "day", "love", "war", "star",
         "space", "city", "dark", "light", "king", "queen", "river", "drama", "comedy", "action", "thriller",
         "romance", "horror", "genres", "(", ")", ",", ":", "1995", "1996", "1997", "1998", "The", "Love", "War"]
# Sentences the tiny byte-level BPE is trained on (the CLLM4Rec prompts' words among them).
CORPUS = [
    "Hello, user_1! Have you seen item_2?",
    "user has interacted with item, user will interact with",
    "item is the movie: Toy Story (1995), genres: Animation, Children, Comedy",
    "user wrote the following review for item: a great movie, I liked it.",
    "The quick brown fox jumps over the lazy dog. Drama Thriller Action Romance 1990 1999 2000",
]


def word_tokenizer(words: list[str], lowercase: bool = False) -> Tokenizer:
    """Whitespace-split word-level tokenizer over `words` (which must contain "[UNK]")."""
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    if lowercase:
        tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


def bpe_tokenizer(vocab_size: int = 300) -> Any:
    """A byte-level BPE (as causal LMs use) trained on CORPUS, as a transformers fast tokenizer."""
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def llama_config(vocab_size: int, hidden: int = 32, layers: int = 2, **extra: Any) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
                       intermediate_size=2 * hidden, vocab_size=vocab_size, **extra)


def write_causal_lm(folder: Path, arch: str = "llama", hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """A random causal LM + its BPE tokenizer saved as an ordinary HF folder (CLLM4Rec's backbone)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaForCausalLM

    torch.manual_seed(seed)
    tok = bpe_tokenizer()
    n = len(tok)
    if arch == "llama":
        model = LlamaForCausalLM(llama_config(n, hidden, layers, max_position_embeddings=512, tie_word_embeddings=True,
                                              pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id))
    elif arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(n_layer=layers, n_embd=hidden, n_head=2, vocab_size=n, n_positions=512,
                                           pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id))
    else:
        raise ValueError(f"unknown arch {arch!r}; accepted: llama, gpt2")
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def write_encoder(folder: Path, kind: str = "bert", layers: int = 3, hidden: int = 32, seed: int = 0) -> Path:
    """A random BERT or Llama base model + a word-level tokenizer.json (TCF's text item tower)."""
    import torch
    from transformers import BertConfig, BertModel, LlamaModel

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "bert":
        model = BertModel(BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                                     intermediate_size=2 * hidden, vocab_size=len(WORDS), pad_token_id=0,
                                     max_position_embeddings=64))
    elif kind == "llama":
        model = LlamaModel(llama_config(len(WORDS), hidden, layers, pad_token_id=0, max_position_embeddings=64))
    else:
        raise ValueError(f"kind must be bert or llama, not {kind!r}")
    model.save_pretrained(folder)
    word_tokenizer(WORDS).save(str(folder / "tokenizer.json"))
    return folder


def tiny_texts(n: int, seed: int = 0) -> list[str]:
    """Item texts in the tiny encoders' vocabulary, shaped like MovieLens's "title (year), genres: ..."."""
    rng = np.random.default_rng(seed)
    content = WORDS[3:20]
    genres = ["drama", "comedy", "action", "thriller", "romance", "horror"]
    return [f"{' '.join(rng.choice(content, size=rng.integers(1, 5)))} ( {rng.choice(['1995', '1997'])} ) , "
            f"genres : {' , '.join(rng.choice(genres, size=rng.integers(1, 3), replace=False))}" for _ in range(n)]


def write_ml100k(folder: Path, users: int = 40, items: int = 30, per_user: int = 12, seed: int = 0) -> Path:
    """ml-100k atomic files (ml-100k.inter / ml-100k.item) that `load_ml100k(folder)` reads, with two
    taste groups (odd users like the first half of the items) so there is signal to learn."""
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


def cllm4rec_argv(lm: Path, data: Path, out: Path) -> list[str]:
    """Flags of a seconds-long `llmrec train cllm4rec` on the tiny assets (one content epoch, two rec
    epochs, fp32 so that results do not depend on the CPU's bf16 support)."""
    return ["--out", str(out), "--schedule", "custom", "--data.dataset", "atomic", "--data.path", str(data),
            "--backbone.path", str(lm), "--recipe.content-warmup-epochs", "1", "--recipe.pretrain-rounds", "0",
            "--train.epochs", "2", "--train.batch-size", "4", "--train.no-progress", "--precision", "fp32"]


def tcf_argv(encoder: Path, data: Path, out: Path) -> list[str]:
    """Flags of a seconds-long `llmrec train tcf` on the tiny assets (two epochs, fp32)."""
    return ["--out", str(out), "--text.encoder", str(encoder), "--data.dataset", "atomic", "--data.path", str(data),
            "--model.dim", "16", "--model.max-seq-len", "8", "--text.max-length", "12", "--train.batch-size", "8",
            "--train.epochs", "2", "--train.no-progress", "--precision", "fp32"]
