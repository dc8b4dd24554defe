"""TCF checkpoint -> ServingBundle (docs/model-repository.md, `tcf` section).

The item encoder is the FULL text path (every LM layer, with the trained top layers, +
pooling + MLP) so the server can encode a new item from raw text. The catalogue's item vectors
come from the pre-inferred table that loading the checkpoint already holds (the frozen layers'
output, cached since training), through the trained top layers + MLP: the same math as the full
path without a second LM pass over every item text (74% of a TCF export at 20k items). A sample
of items is re-encoded through the full path and must agree within the parity tolerance, else
the whole catalogue is re-encoded (the export log says which, with the error).
Known users' vectors come from the user encoder over those vectors.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from common import logs
from models.bundle import EncoderExport, QualityProbe, ServingBundle
from models.data.splits import Split
from models.tcf import text_encoder as te
from models.tcf.checkpoint import LoadedCheckpoint, load_checkpoint
from models.tcf.data import left_pad
from models.tcf.holdout import held_out_of
from models.tcf.item_tower import FullTextItemEncoder
from models.tcf.model import uses_text
from models.tcf.user_tower import SASRecUserEncoder
from repository.files import TOKENIZER

PROBE_USERS = 200
ITEM_CHECK = 16  # items re-encoded from raw text to confirm the pre-inferred path matches the served one
ID_PART = "item_id_part.npy"  # hybrid towers: the ID part of each trained item, added to its text vector
log = logs.get(__name__)


def full_item_encoder(ck: LoadedCheckpoint) -> FullTextItemEncoder:
    assert ck.lm is not None and ck.text is not None
    return FullTextItemEncoder(ck.lm, ck.text.pooling, ck.model.item_tower.mlp).eval()


@torch.no_grad()
def encode_texts(encoder: torch.nn.Module, tok, texts: list[str], batch: int = 64) -> np.ndarray:
    outs = [encoder(*te.tokenize(tok, texts[s : s + batch])) for s in range(0, len(texts), batch)]
    return torch.cat(outs).numpy().astype(np.float32)


def text_item_vectors(model: torch.nn.Module, tower_kind: str, enc: torch.nn.Module, tok, texts: list[str],
                      batch: int, atol: float = 1e-4, rtol: float = 1e-5) -> tuple[np.ndarray, dict]:
    """(text vectors of the trained items, how they were computed) from the pre-inferred table, checked
    on ITEM_CHECK items against the full item encoder (re-encoding everything if they disagree)."""
    tower = model.item_tower.text if tower_kind == "hybrid" else model.item_tower
    n = len(texts)
    with torch.no_grad():
        vectors = torch.cat([tower(torch.arange(s, min(s + 256, n))) for s in range(0, n, 256)]).float().numpy()
    check = np.unique(np.linspace(0, n - 1, min(ITEM_CHECK, n)).astype(int))
    full = encode_texts(enc, tok, [texts[i] for i in check], batch)
    err = float(np.abs(full.astype(np.float64) - vectors[check]).max())
    tol = atol + rtol * float(np.abs(full).max())
    info = {"source": "pre-inference", "checked_items": len(check), "max_abs_err": err, "tolerance": tol}
    if err > tol:
        log.warning("pre-inferred item vectors disagree with the full item encoder: re-encoding every item",
                    max_abs_err=err, tolerance=tol)
        return encode_texts(enc, tok, texts, batch), {**info, "source": "full item encoder"}
    return vectors.astype(np.float32), info


def _sasrec_inputs(item_vectors: np.ndarray, histories: list[np.ndarray], seq: int) -> tuple[torch.Tensor, ...]:
    rows, mask = left_pad(histories, seq)
    vecs = torch.from_numpy(item_vectors)[torch.from_numpy(rows)] * torch.from_numpy(mask).unsqueeze(-1)
    return vecs.float(), torch.from_numpy(mask)


def probe_part(split: Split, keep: np.ndarray) -> tuple[list[int], list[np.ndarray], list[np.ndarray]]:
    """(users, history per user, targets per user) of the export gate's quality probe: the first
    PROBE_USERS validation users whose valid item is served, their train items as history. Never the
    test part: the gate picks the serving engine, a choice the test part must not see."""
    users = [int(u) for u in split.eval_users("valid") if keep[split.valid[u]].all()][:PROBE_USERS]
    return users, split.seen("valid"), split.valid


def load_bundle(checkpoint_dir: Path, batch: int = 64, known_users: bool = True) -> ServingBundle:
    ck = load_checkpoint(Path(checkpoint_dir), need_full_lm=True)
    cfg, model = ck.model.cfg, ck.model
    # items held out of training (cold-start protocol) are left out of the export: they are the new
    # items a replay adds through UpsertItems; the rows after them move up
    held = held_out_of(ck.config)
    keep = ~np.isin(np.arange(len(ck.items)), held)
    row_map = np.cumsum(keep) - 1
    encoders: dict[str, EncoderExport] = {}
    assets: dict[str, Path] = {}
    tcf_section: dict = {"max_seq_len": cfg.max_seq_len, "text_max_length": None, "tokenizer": None,
                         "pad_token_id": 0}
    if uses_text(cfg.item_tower):
        assert ck.text is not None
        folder = te.resolve_encoder_dir(ck.text.encoder)
        tok = te.load_tokenizer(folder, ck.text.max_length, ck.text.lowercase)
        tok_path = Path(tempfile.mkdtemp(prefix="tcf-bundle-")) / "tokenizer.json"
        tok.save(str(tok_path))
        assets[TOKENIZER] = tok_path
        enc = full_item_encoder(ck)
        item_vectors, how = text_item_vectors(model, cfg.item_tower, enc, tok, ck.item_texts, batch)
        log.info("item vectors", **how)
        if cfg.item_tower == "hybrid":  # served vector = text part (the item encoder) + the trained ID part
            id_part = model.item_tower.emb.weight.detach().float().numpy()
            item_vectors = item_vectors + id_part
            np.save(tok_path.parent / ID_PART, id_part[keep])
            assets[ID_PART] = tok_path.parent / ID_PART
            tcf_section["id_part"] = ID_PART
        if ck.catalogue_only:  # every item of the items file is served: these by their text alone
            extra_vectors = encode_texts(enc, tok, [t for _, t, _ in ck.catalogue_only], batch)
            log.info("items without interactions added to the catalogue by their text", items=len(ck.catalogue_only))
        samples = [te.tokenize(tok, ck.item_texts[:1]), te.tokenize(tok, ck.item_texts[1:4]),
                   te.tokenize(tok, ["a new item", "Another brand new movie (2030), genres: Drama"])]
        encoders["item_encoder"] = EncoderExport(
            enc, ["input_ids", "attention_mask"], "item_vector",
            {"input_ids": {0: "batch", 1: "length"}, "attention_mask": {0: "batch", 1: "length"},
             "item_vector": {0: "batch"}}, samples)
        tcf_section.update(text_max_length=ck.text.max_length, tokenizer=TOKENIZER,
                           pad_token_id=te.pad_token_id(folder, tok))
    else:
        item_vectors = model.all_item_vectors().numpy().astype(np.float32)
        if ck.catalogue_only:
            log.warning("items without interactions are not served: an ID item tower has no vector for them",
                        items=len(ck.catalogue_only))
    split = ck.split
    histories = [np.concatenate([a, b, c]) for a, b, c in zip(split.train, split.valid, split.test, strict=True)]
    histories = [h[keep[h]] for h in histories]
    probe = None
    with torch.no_grad():
        if cfg.user_tower == "sasrec":
            user_enc = SASRecUserEncoder(model.user_tower).eval()
            seq = cfg.max_seq_len
            user_vectors = np.concatenate([
                user_enc(*_sasrec_inputs(item_vectors, histories[s : s + batch], seq)).numpy()
                for s in range(0, len(histories), batch)]).astype(np.float32)
            samples = [_sasrec_inputs(item_vectors, histories[:1], seq),
                       _sasrec_inputs(item_vectors, [h[-3:] for h in histories[1:5]], seq),
                       _sasrec_inputs(item_vectors, [h[-5:] for h in histories[5:8]], 6)]
            encoders["user_encoder"] = EncoderExport(
                user_enc, ["item_vectors", "mask"], "user_vector",
                {"item_vectors": {0: "batch", 1: "seq"}, "mask": {0: "batch", 1: "seq"},
                 "user_vector": {0: "batch"}}, samples)
            users, seen, targets = probe_part(split, keep)
            probe = QualityProbe(
                [_sasrec_inputs(item_vectors, [seen[u] for u in users[s : s + batch]], seq)
                 for s in range(0, len(users), batch)],
                [row_map[seen[u]] for u in users], [row_map[targets[u]] for u in users], "hr@10")
        else:
            user_vectors = model.user_tower.emb.weight.detach().numpy().astype(np.float32)
    user_ids = list(ck.users.ids)
    if not known_users:  # cheap here, but benchmarks ask both kinds the same way
        user_ids, user_vectors = [], user_vectors[:0]
    item_ids = [i for i, k in zip(ck.items.ids, keep, strict=True) if k]
    titles = [t for t, k in zip(ck.item_titles, keep, strict=True) if k]
    served_vectors, histories = item_vectors[keep], [row_map[h] for h in histories]
    if uses_text(cfg.item_tower) and ck.catalogue_only:  # appended: the trained rows keep their numbers
        item_ids += [i for i, _, _ in ck.catalogue_only]
        titles += [title for _, _, title in ck.catalogue_only]
        served_vectors = np.concatenate([item_vectors, extra_vectors])
    return ServingBundle(
        kind="tcf", user_tower=cfg.user_tower, item_tower=cfg.item_tower, dim=cfg.dim, item_ids=item_ids,
        item_vectors=served_vectors, item_titles=titles, user_ids=user_ids,
        user_vectors=user_vectors, user_histories=histories, encoders=encoders, model_config=tcf_section,
        assets=assets, probe=probe)
