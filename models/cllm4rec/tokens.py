"""Atomic user/item ID tokens on top of any Hugging Face tokenizer.

With a backbone vocabulary of N tokens (len(tokenizer), added specials included), I users and
J items: "user_i" is token N+i, "item_j" is token N+I+j and one anonymous-user token N+I+J
follows the items (history-only requests use it). A model without user parameters
(`user_tokens=False`: a user is their history) has no user tokens at all: items start at N, the
anonymous-user token follows them, and every user's prompt uses it, so nothing grows with the number
of users; the user count stays in the layout only to check user indices. The words are left to the backbone's own
tokenizer; a single space before an ID word belongs to the ID token (as in the paper's demo,
where " user_1" becomes the one token user_1), and decoding puts it back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

ID_WORD = re.compile(r" ?\b(user|item)_(\d+)\b")
ANON_WORD = "user_anon"


@dataclass
class IdVocab:
    """Where the ID tokens sit in the extended vocabulary (the numbers the manifest records)."""

    vocab_size: int  # N: backbone tokens
    num_users: int
    num_items: int
    user_tokens: bool = True  # False: no token (and no ID row) per user; every user is the anonymous one

    @property
    def user_offset(self) -> int:
        return self.vocab_size

    @property
    def user_rows(self) -> int:
        """User tokens in the layout (0 without user tokens)."""
        return self.num_users if self.user_tokens else 0

    @property
    def item_offset(self) -> int:
        return self.vocab_size + self.user_rows

    @property
    def item_row(self) -> int:
        """Row of item 0 in an ID table (tables hold the rows of every token from N on)."""
        return self.item_offset - self.vocab_size

    @property
    def id_rows(self) -> int:
        """Rows of an ID table: users (when they have tokens), items, the anonymous user."""
        return self.total - self.vocab_size

    @property
    def anon_token(self) -> int:
        return self.item_offset + self.num_items

    @property
    def total(self) -> int:
        """Rows of the extended embedding table: vocab + users + items + anon."""
        return self.anon_token + 1

    def user(self, i: int) -> int:
        if not 0 <= i < self.num_users:
            raise ValueError(f"user index {i} out of range [0, {self.num_users})")
        return self.user_offset + i if self.user_tokens else self.anon_token

    def item(self, j: int) -> int:
        if not 0 <= j < self.num_items:
            raise ValueError(f"item index {j} out of range [0, {self.num_items})")
        return self.item_offset + j


class IdTokenizer:
    """Encodes text containing user_i / item_j words to ids of the extended vocabulary."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, num_users: int, num_items: int,
                 user_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.vocab = IdVocab(len(tokenizer), num_users, num_items, user_tokens)

    @property
    def pad_token_id(self) -> int:
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        return int(pad) if pad is not None else 0

    def words(self, text: str) -> list[int]:
        """Plain backbone tokens of a text piece (no specials): for the prompt templates."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        pos = 0
        for m in ID_WORD.finditer(text):
            if m.start() > pos:
                ids += self.words(text[pos : m.start()])
            kind, idx = m.group(1), int(m.group(2))
            ids.append(self.vocab.user(idx) if kind == "user" else self.vocab.item(idx))
            pos = m.end()
        if pos < len(text):
            ids += self.words(text[pos:])
        return ids

    def id_word(self, token: int) -> str | None:
        v = self.vocab
        if token == v.anon_token:
            return ANON_WORD
        if v.user_offset <= token < v.item_offset:
            return f"user_{token - v.user_offset}"
        if v.item_offset <= token < v.anon_token:
            return f"item_{token - v.item_offset}"
        return None

    def tokens(self, ids: list[int]) -> list[str]:
        """Readable token strings, ID tokens as user_i / item_j."""
        out = []
        for t in ids:
            word = self.id_word(t)
            out.append(word if word is not None else self.tokenizer.convert_ids_to_tokens(t))
        return out

    def decode(self, ids: list[int]) -> str:
        parts: list[str] = []
        run: list[int] = []
        for t in ids:
            word = self.id_word(t)
            if word is None:
                run.append(t)
                continue
            if run:
                parts.append(self.tokenizer.decode(run))
                run = []
            parts.append(word if not parts else " " + word)
        if run:
            parts.append(self.tokenizer.decode(run))
        return "".join(parts)
