"""Folding a model's item journal into the version being exported.

Items added while serving (UpsertItems) otherwise live only in the journal and are re-encoded by
every replica at every load. Folding puts them into the new version's catalogue, encoded by the
new version's own ONNX item encoder with the server's own text path (repository/item_text.py) on
ONNX Runtime's CPU provider in fp32: a folded item has bit for bit the vector a server gives it with
the onnxruntime-cpu item engine (fp32), and within that engine's rounding of it with another (a bf16
engine differs by up to ~1e-3 per component; docs/model-repository.md).

The fold carries the journal's whole state through its last sequence number, so servers replay only
newer records: items deleted by then are rows of the catalogue (a history naming one is still
answered) listed in the manifest as hidden, never recommended; that includes an item added while
serving and deleted since, which gets its vector from its last upsert.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from repository import journal
from repository.item_text import configure_tokenizer, encode_texts
from repository.manifest import EncoderSpec, JournalFold, TcfSection


def journal_source(url: str, model_dir: Path) -> Path | journal.ChangeLog:
    """The journal the servers use: the file beside the versions, or their --journal URL's Redis stream."""
    if not url:
        return model_dir / journal.JOURNAL
    from repository.journal_redis import open_log

    return open_log(url, model_dir.name)


def _read_state(source: Path | journal.ChangeLog) -> tuple[dict[str, journal.ItemState], int]:
    """The journal's state through its last record (the file under its shared lock: no half-written record)."""
    if isinstance(source, Path):
        return journal.read_state(source)
    res = source.read_new(journal.Cursor())
    return journal.effective(res.records), res.cursor.last_seq


class FoldError(ValueError):
    """The journal cannot be folded into this model (e.g. it has no text item encoder)."""


def fold_journal(journal_path: Path | journal.ChangeLog, item_encoder: Path | None, tokenizer: Path | None, tcf: TcfSection | None,
                 encoder_entry: EncoderSpec | None, item_ids: list[str], item_vectors: np.ndarray,
                 item_titles: list[str], id_part: np.ndarray | None = None
                 ) -> tuple[list[str], np.ndarray, list[str], JournalFold]:
    """(item ids, vectors, titles) with the journal's live upserts folded in, and the manifest entry.
    `id_part` (hybrid item towers): an exported item whose text was replaced keeps its ID part."""
    state, last = _read_state(journal_path)
    upserts = [st for st in state.values() if st.upsert_seq and st.text]
    known = set(item_ids) | {st.item_id for st in upserts}
    hidden = sorted(st.item_id for st in state.values() if st.deleted and st.item_id in known)
    entry = JournalFold(journal.JOURNAL if isinstance(journal_path, Path) else str(getattr(journal_path, "key", "")),
                        last, len(upserts), hidden)
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
    vectors = encode_texts(lambda feeds: session.run([output], feeds)[0], tok, [st.text for st in upserts],
                           max_length, tcf.pad_token_id, encoder_entry.input_names)
    ids, titles, vecs = list(item_ids), list(item_titles), np.array(item_vectors, dtype=np.float32, copy=True)
    rows = {x: i for i, x in enumerate(ids)}
    new = []
    for st, vec in zip(upserts, vectors, strict=True):
        row = rows.get(st.item_id)
        if row is None:
            rows[st.item_id] = len(ids)
            ids.append(st.item_id)
            titles.append(st.title)
            new.append(vec)
        else:
            vecs[row] = vec + (id_part[row] if id_part is not None and row < len(id_part) else 0.0)
            titles[row] = st.title or titles[row]
    if new:
        vecs = np.concatenate([vecs, np.stack(new)])
    return ids, np.ascontiguousarray(vecs, dtype=np.float32), titles, entry
