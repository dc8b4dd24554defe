"""Folding a model's item journal into the version being exported.

Items added while serving (UpsertItems) otherwise live only in the journal and are re-encoded by
every replica at every load. Folding puts them into the new version's catalogue, encoded by the
new version's own ONNX item encoder with the server's own text path (repository/item_text.py), so a
folded item has exactly the vector a server would have given it. The manifest records the last
sequence number folded; servers replay only newer upserts. Deletions are not folded: the exported
rows stay (deleted items remain valid in histories) and servers re-apply every deletion.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from repository import journal
from repository.item_text import configure_tokenizer, encode_texts
from repository.manifest import EncoderSpec, JournalFold, TcfSection


class FoldError(ValueError):
    """The journal cannot be folded into this model (e.g. it has no text item encoder)."""


def fold_journal(journal_path: Path, item_encoder: Path | None, tokenizer: Path | None, tcf: TcfSection | None,
                 encoder_entry: EncoderSpec | None, item_ids: list[str], item_vectors: np.ndarray,
                 item_titles: list[str], id_part: np.ndarray | None = None
                 ) -> tuple[list[str], np.ndarray, list[str], JournalFold]:
    """(item ids, vectors, titles) with the journal's live upserts folded in, and the manifest entry.
    `id_part` (hybrid item towers): an exported item whose text was replaced keeps its ID part."""
    state, last = journal.read_state(journal_path)
    upserts = [r for r in state.values() if r.op == "upsert"]
    entry = JournalFold(journal.JOURNAL, last, len(upserts))
    if not upserts:
        return item_ids, item_vectors, item_titles, entry
    if item_encoder is None or tokenizer is None or encoder_entry is None or tcf is None:
        raise FoldError(f"{journal_path} holds {len(upserts)} upserted items but this model has no text item "
                        "encoder to encode them; export without --fold-journal")
    import onnxruntime as ort
    from tokenizers import Tokenizer

    max_length = tcf.text_max_length or 32
    session = ort.InferenceSession(str(item_encoder), providers=["CPUExecutionProvider"])
    tok = configure_tokenizer(Tokenizer.from_file(str(tokenizer)), max_length)
    output = encoder_entry.output["name"]
    vectors = encode_texts(lambda feeds: session.run([output], feeds)[0], tok, [r.text for r in upserts], max_length,
                           tcf.pad_token_id, encoder_entry.input_names)
    ids, titles, vecs = list(item_ids), list(item_titles), np.array(item_vectors, dtype=np.float32, copy=True)
    rows = {x: i for i, x in enumerate(ids)}
    new = []
    for rec, vec in zip(upserts, vectors, strict=True):
        row = rows.get(rec.item_id)
        if row is None:
            rows[rec.item_id] = len(ids)
            ids.append(rec.item_id)
            titles.append(rec.title)
            new.append(vec)
        else:
            vecs[row] = vec + (id_part[row] if id_part is not None and row < len(id_part) else 0.0)
            titles[row] = rec.title or titles[row]
    if new:
        vecs = np.concatenate([vecs, np.stack(new)])
    return ids, np.ascontiguousarray(vecs, dtype=np.float32), titles, entry
