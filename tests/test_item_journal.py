"""The item journal format (repository/journal.py) and the serving catalogue (server/catalogue.py)."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import faiss
import numpy as np
import pytest

from repository import journal
from server.catalogue import Catalogue
from server.indexes.faiss_cpu import FaissCpu, FaissIndex


def _append(path: Path, changes: list[tuple[str, str, str, str]], offset: int = 0, seq: int = 0):
    return journal.append(path, offset, seq, changes)


def test_append_read_and_effective_state(tmp_path: Path) -> None:
    path = tmp_path / "m" / journal.JOURNAL
    _, new = _append(path, [("upsert", "a", "text a", "A"), ("upsert", "b", "text b", "")])
    assert [r.seq for r in new] == [1, 2]
    others, new2 = _append(path, [("delete", "a", "", "")])  # a writer that read nothing yet
    assert [r.item_id for r in others.records] == ["a", "b"] and new2[0].seq == 3
    state, last = journal.read_state(path)
    assert last == 3 and list(state) == ["b", "a"] and state["a"].deleted and state["a"].text == "text a"
    assert state["a"].title == "A" and state["b"].text == "text b"


def test_torn_tail_is_ignored_and_truncated_by_the_next_writer(tmp_path: Path) -> None:
    path = tmp_path / journal.JOURNAL
    _append(path, [("upsert", "a", "x", "")])
    good = path.read_bytes()
    torn = journal.JournalRecord(2, "upsert", "b", "y").line()[:-7]  # crash in the middle of a write
    path.write_bytes(good + torn)
    res = journal.read_from(path)
    assert [r.item_id for r in res.records] == ["a"] and res.offset == len(good) and not res.corrupt
    _, new = _append(path, [("upsert", "c", "z", "")], offset=res.offset, seq=1)
    assert new[0].seq == 2
    assert [r.item_id for r in journal.read_from(path).records] == ["a", "c"]
    assert not journal.read_from(path).corrupt


def test_corrupt_record_is_skipped_and_reported(tmp_path: Path) -> None:
    path = tmp_path / journal.JOURNAL
    _append(path, [("upsert", "a", "x", ""), ("upsert", "b", "y", ""), ("upsert", "c", "z", "")])
    lines = path.read_bytes().split(b"\n")
    i = next(j for j, line in enumerate(lines) if b'"y"' in line)
    lines[i] = lines[i].replace(b'"y"', b'"Y"')  # checksum no longer matches
    path.write_bytes(b"\n".join(lines))
    res = journal.read_from(path)
    assert [r.item_id for r in res.records] == ["a", "c"]
    assert len(res.corrupt) == 1 and "checksum" in res.corrupt[0]


def test_unknown_op_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="accepted: upsert, delete"):
        _append(tmp_path / journal.JOURNAL, [("rename", "a", "", "")])


def _writer(path: str, worker: int, n: int) -> None:
    offset, seq = 0, 0
    for i in range(n):
        others, new = journal.append(Path(path), offset, seq, [("upsert", f"w{worker}-{i}", "t", "")])
        offset, seq = others.offset, new[-1].seq


def test_concurrent_writers_never_share_a_sequence_number(tmp_path: Path) -> None:
    path = tmp_path / journal.JOURNAL
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(path), w, 25)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    res = journal.read_from(path)
    assert not res.corrupt
    assert [r.seq for r in res.records] == list(range(1, 76))
    assert len({r.item_id for r in res.records}) == 75


# ---- catalogue ----
def _catalogue(n: int = 50, dim: int = 8, kind: str = "flat", seed: int = 0) -> tuple[Catalogue, np.ndarray]:
    rng = np.random.default_rng(seed)
    vecs = rng.normal(size=(n, dim)).astype(np.float32)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, 16, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = 256
    else:
        index = faiss.IndexFlatIP(dim)
    index.add(vecs)
    return Catalogue.exported(FaissIndex(index, "faiss-cpu"), [f"i{r}" for r in range(n)], vecs,
                              [f"T{r}" for r in range(n)], FaissCpu.exact), vecs


def _brute(live: dict[str, np.ndarray], q: np.ndarray, k: int, exclude: set[str] = frozenset()) -> list[str]:
    ids = [x for x in live if x not in exclude]
    scores = np.array([live[x] @ q for x in ids])
    return [ids[i] for i in np.argsort(-scores, kind="stable")[:k]]


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_catalogue_changes_match_brute_force_over_the_live_items(kind: str) -> None:
    cat, vecs = _catalogue(kind=kind)
    rng = np.random.default_rng(1)
    live = {f"i{r}": vecs[r] for r in range(len(vecs))}
    new = rng.normal(size=(3, 8)).astype(np.float32) * 3
    cat2, added, replaced = cat.changed([("n0", new[0], "New 0"), ("i5", new[1], ""), ("n1", new[2], "New 1")],
                                        deletes=["i7", "n1", "unknown"])
    assert (added, replaced) == (2, 1)
    live.update(n0=new[0], i5=new[1])
    del live["i7"]
    assert cat2.num_items == len(live) == 50
    assert cat.num_items == 50 and cat.row("n0") is None  # the old snapshot is untouched
    assert cat2.title(cat2.row("i5")) == "T5" and cat2.title(cat2.row("n0")) == "New 0"
    assert "i7" in cat2.deleted and cat2.row("i7") is not None  # still valid in histories
    for q in rng.normal(size=(5, 8)).astype(np.float32):
        excluded = {cat2.row("i1"), cat2.row("n0")}
        got = [cat2.item_id(r) for r, _ in cat2.search(q, 10, excluded)]
        assert got == _brute(live, q, 10, {"i1", "n0"})
    cat3, added, _ = cat2.changed([("n1", new[2], "")])  # an upsert brings a deleted item back
    assert added == 0 and "n1" not in cat3.deleted
    q = new[2]
    assert cat3.item_id(cat3.search(q, 1, set())[0][0]) == "n1"
    assert np.allclose(cat3.vectors([cat3.row("n1"), 0]), np.stack([new[2], vecs[0]]))


def test_catalogue_search_returns_everything_when_k_exceeds_the_live_items() -> None:
    cat, _ = _catalogue(n=5)
    cat2, _, _ = cat.changed(deletes=["i0", "i1"])
    hits = cat2.search(np.ones(8, np.float32), 10, set())
    assert sorted(cat2.item_id(r) for r, _ in hits) == ["i2", "i3", "i4"]


def test_a_journal_written_before_headers_is_read_and_continued(tmp_path: Path) -> None:
    path = tmp_path / journal.JOURNAL
    path.write_bytes(journal.JournalRecord(1, "upsert", "a", "x").line() + journal.JournalRecord(2, "delete", "a").line())
    res = journal.read_new(path)
    assert [r.seq for r in res.records] == [1, 2] and res.cursor.identity == "" and not res.corrupt
    others, new = journal.append(path, res.cursor, [("upsert", "b", "y", "")])
    assert new[0].seq == 3 and not others.rewound and not others.records
    assert journal.compact(path) == (3, 3)  # a's upsert and delete, b's upsert; now with a header
    res = journal.read_new(path)
    assert res.cursor.identity and [r.seq for r in res.records] == [1, 2, 3]
