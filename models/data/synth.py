"""`llmrec data synth`: synthetic implicit-feedback logs shaped like real ones, for measuring scale
without anybody's private data.

What makes them "shaped like real ones", each a known property of public logs that the training
cost or the model quality depends on:
- item popularity is Zipf (weight of the item at popularity rank r is r^-zipf), so a few items take
  a large share of the interactions and most items are rare: samplers, logQ corrections and
  popularity baselines all behave as they do on real data;
- history lengths are log-normal (many short histories, a long tail of heavy users), scaled so that
  the total is about `--interactions`; the prompt length and the per-user cost follow them;
- users belong to taste clusters: each has a primary and a secondary cluster, and `affinity` of their
  interactions come from items of those clusters (by popularity inside the cluster), the rest from the
  whole catalogue by popularity; over a history the taste drifts from the primary cluster towards the
  secondary one (`drift`), so the order in time carries signal too (what a sequential model uses);
- item titles and genres carry the cluster: each cluster has its own title words and genres, with
  `text_noise` of the title words drawn from the common pool instead, so a text tower can learn from
  the text, but not perfectly;
- timestamps: each user is active over a window of a log-normal length somewhere inside `days` days,
  their interactions spread over it in history order.

Written into `--out` (in the formats `--data.dataset interactions` reads):
    synthetic_interactions.csv  user_id,item_id,timestamp (Unix seconds), one interaction per line
    synthetic_items.csv         item_id,title,genres   (the loader's item text: "<title>, genres: <genres>")
    synthetic_truth_users.csv   user_id,primary_cluster,secondary_cluster  (ground truth, never loaded)
    synthetic_truth_items.csv   item_id,cluster,popularity_rank            (ground truth, never loaded)
    SYNTHETIC.json / README.md  the label: synthetic, generator, every parameter, the seed, what came out
The file names start with "synthetic", so a data set loaded from them is named synthetic_interactions in
every log, checkpoint and report.

Users are generated and written in chunks (`chunk_users`), so memory is bounded by one chunk's
interactions whatever the total; every chunk has its own random stream derived from the seed, so
the output is a function of the seed and the parameters only.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from common import logs
from common.config import parse, to_dict
from common.errors import ConfigError

log = logs.get(__name__)

GENERATOR_VERSION = 1
INTERACTIONS = "synthetic_interactions.csv"
ITEMS = "synthetic_items.csv"
TRUTH_USERS = "synthetic_truth_users.csv"
TRUTH_ITEMS = "synthetic_truth_items.csv"
LABEL = "SYNTHETIC.json"

GENRES = ["Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
          "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]
# Title words: real English words (an LM's tokenizer and embeddings know them), dealt out to the clusters.
WORDS = [
    "amber", "anchor", "angel", "arrow", "ash", "autumn", "banner", "bay", "bell", "birch", "blade", "bloom",
    "bone", "border", "breeze", "bridge", "bronze", "canyon", "captain", "castle", "cedar", "chain", "chapter",
    "cinder", "circle", "cliff", "clock", "cloud", "coast", "comet", "copper", "coral", "crown", "crystal",
    "dagger", "dawn", "desert", "diamond", "dragon", "dream", "drift", "dust", "eagle", "echo", "ember", "empire",
    "engine", "falcon", "feather", "field", "fire", "flame", "flint", "forest", "fortune", "fountain", "frost",
    "garden", "ghost", "giant", "glacier", "glass", "gold", "granite", "harbor", "harvest", "hawk", "heart",
    "hollow", "horizon", "hunter", "iron", "island", "ivory", "jade", "jewel", "journey", "jungle", "keeper",
    "kingdom", "knight", "lake", "lantern", "legacy", "legend", "lighthouse", "lily", "lion", "machine", "marble",
    "meadow", "mercury", "midnight", "mirror", "mist", "moon", "mountain", "night", "oak", "ocean", "orchid",
    "painter", "palace", "paper", "pearl", "phantom", "pilgrim", "pine", "planet", "poet", "prairie", "prince",
    "prism", "quarry", "queen", "quest", "rain", "raven", "reef", "ribbon", "river", "robot", "rose", "ruby",
    "saber", "sailor", "salt", "sapphire", "scarlet", "secret", "shadow", "shell", "shore", "silver", "sky",
    "snow", "soldier", "sparrow", "spider", "spirit", "spring", "star", "stone", "storm", "summer", "sun", "sword",
    "temple", "thunder", "tide", "tiger", "timber", "tower", "trail", "treasure", "valley", "velvet", "violet",
    "voyage", "wander", "warrior", "water", "wave", "willow", "wind", "winter", "wolf", "wonder", "zephyr",
]
LINKS = ["of the", "and the", "in the", "beyond the", "under the"]


@dataclass
class SynthConfig:
    out: Path = Path("synthetic-data")  # folder the files are written into (created)
    users: int = 10_000
    items: int = 5_000
    interactions: int = 300_000  # target total; history lengths are log-normal, scaled so their sum is about this
    seed: int = 0
    clusters: int = 20  # taste clusters (users and items); 0: one per 250 items, between 4 and 200
    zipf: float = 1.0  # item popularity exponent: the item at popularity rank r has weight r^-zipf
    length_sigma: float = 1.0  # sigma of the log-normal history lengths (0: every user about the mean)
    min_history: int = 5  # shortest history (a 80/10/10 split needs a few items per user)
    max_history: int = 0  # longest history; 0: a quarter of the items
    affinity: float = 0.8  # share of a user's interactions from their taste clusters (the rest: the whole catalogue)
    drift: float = 0.5  # at the end of a history this share of the in-taste picks come from the secondary cluster
    text_noise: float = 0.2  # share of title words drawn from the common pool instead of the item's cluster
    days: int = 730  # the log's time span
    start: str = "2022-01-01"  # the log's first day (UTC)
    chunk_users: int = 20_000  # users generated and written at a time (bounds memory)
    overwrite: bool = False  # replace the files of an earlier run in --out

    def check(self) -> None:
        """One clear line per impossible combination, before anything is written."""
        if self.users < 1 or self.items < 2:
            raise ConfigError(f"--users must be >= 1 and --items >= 2, got {self.users} and {self.items}")
        if self.min_history < 1:
            raise ConfigError(f"--min-history must be >= 1, got {self.min_history}")
        if self.longest() < self.min_history:
            raise ConfigError(f"--max-history {self.longest()} (a quarter of the items when 0) is below --min-history "
                              f"{self.min_history}: give more items or a shorter minimum")
        if self.interactions < self.users * self.min_history:
            raise ConfigError(f"--interactions {self.interactions} is below --users x --min-history "
                              f"({self.users * self.min_history}); expected at least that many")
        if self.interactions > self.users * self.longest():
            raise ConfigError(f"--interactions {self.interactions} is above --users x the longest history "
                              f"({self.users} x {self.longest()}); expected at most that many")
        if not (0 <= self.affinity <= 1 and 0 <= self.drift <= 1 and 0 <= self.text_noise <= 1):
            raise ConfigError("--affinity, --drift and --text-noise are shares: each in [0, 1]")
        if self.zipf < 0 or self.length_sigma < 0 or self.days < 1 or self.chunk_users < 1:
            raise ConfigError("--zipf and --length-sigma must be >= 0, --days and --chunk-users >= 1")
        try:
            self.start_ts()
        except ValueError:
            raise ConfigError(f"--start {self.start!r}: expected a date such as 2022-01-01") from None

    def longest(self) -> int:
        return self.max_history if self.max_history > 0 else max(self.items // 4, 1)

    def num_clusters(self) -> int:
        n = self.clusters if self.clusters > 0 else min(max(self.items // 250, 4), 200)
        return max(1, min(n, self.items))

    def start_ts(self) -> float:
        return datetime.fromisoformat(self.start).replace(tzinfo=UTC).timestamp()


# ---------------------------------------------------------------------------------------- items


@dataclass
class Catalogue:
    cluster: np.ndarray  # int64 [M] cluster of each item
    rank: np.ndarray  # int64 [M] popularity rank (0 = most popular)
    weight: np.ndarray  # float64 [M] Zipf weight
    order: np.ndarray  # int64 [M] item indices sorted by cluster (the per-cluster samplers)
    starts: np.ndarray  # int64 [C + 1] where each cluster's items begin in `order`
    cum: np.ndarray  # float64 [M] running sum of weight[order]: one searchsorted samples within any cluster

    @classmethod
    def build(cls, cfg: SynthConfig, rng: np.random.Generator) -> Catalogue:
        m, c = cfg.items, cfg.num_clusters()
        # every cluster gets at least one item, the rest at random
        cluster = np.concatenate([np.arange(c), rng.integers(0, c, m - c)])[rng.permutation(m)]
        rank = rng.permutation(m)
        weight = (rank + 1.0) ** -cfg.zipf
        order = np.argsort(cluster, kind="stable")
        starts = np.searchsorted(cluster[order], np.arange(c + 1))
        return cls(cluster, rank, weight, order, starts, np.cumsum(weight[order]))

    def sample(self, clusters: np.ndarray, u: np.ndarray) -> np.ndarray:
        """One item per entry, by popularity inside `clusters` (-1: inside the whole catalogue)."""
        whole = clusters < 0
        c = np.where(whole, 0, clusters)
        lo = np.where(whole, 0, self.starts[c])
        hi = np.where(whole, len(self.order), self.starts[c + 1])
        base = np.where(lo > 0, self.cum[np.maximum(lo - 1, 0)], 0.0)
        top = self.cum[hi - 1]
        pos = np.searchsorted(self.cum, base + u * (top - base), side="right")
        return self.order[np.clip(pos, lo, hi - 1)]


def cluster_vocabulary(n_clusters: int, rng: np.random.Generator) -> tuple[list[list[str]], list[list[str]]]:
    """Title words and genres of each cluster: the words dealt out without overlap while they last
    (then reused, shifted), the genres a primary and a secondary one per cluster."""
    words = list(rng.permutation(WORDS))
    per = max(4, min(12, len(words) // n_clusters))
    vocab = [[words[(k * per + i) % len(words)] for i in range(per)] for k in range(n_clusters)]
    genres = [[GENRES[k % len(GENRES)], GENRES[(7 * k + 3) % len(GENRES)]] for k in range(n_clusters)]
    return vocab, genres


def item_rows(cfg: SynthConfig, cat: Catalogue, rng: np.random.Generator) -> list[tuple[int, str, str]]:
    """(item id, title, genres) of every item: 2-4 title words, each from the item's cluster with
    probability 1 - text_noise; genres: the cluster's primary one (90%), its secondary one (50%) and a
    random one (15%)."""
    vocab, genres = cluster_vocabulary(cfg.num_clusters(), rng)
    m, per = cfg.items, len(vocab[0])
    table = np.array(vocab, dtype=object)
    n_words = rng.integers(2, 5, m)
    own = table[cat.cluster[:, None], rng.integers(0, per, (m, 4))]
    common = np.array(WORDS, dtype=object)[rng.integers(0, len(WORDS), (m, 4))]
    words = np.where(rng.random((m, 4)) >= cfg.text_noise, own, common)
    link_at = np.where((n_words >= 3) & (rng.random(m) < 0.4), rng.integers(1, 3, m), 0)
    link = rng.integers(0, len(LINKS), m)
    sequel = np.where(rng.random(m) < 0.1, rng.integers(2, 4, m), 0)
    g_primary, g_secondary, g_random = rng.random(m) < 0.9, rng.random(m) < 0.5, rng.random(m) < 0.15
    g_pick = rng.integers(0, len(GENRES), m)
    rows = []
    for j in range(m):
        picked = [str(w).capitalize() for w in words[j, : n_words[j]]]
        if link_at[j]:
            picked.insert(int(link_at[j]), LINKS[link[j]])
        title = " ".join(picked) + (f" {sequel[j]}" if sequel[j] else "")
        k = int(cat.cluster[j])
        g = [genres[k][0]] if g_primary[j] else []
        if g_secondary[j]:
            g.append(genres[k][1])
        if g_random[j] or not g:
            g.append(GENRES[g_pick[j]])
        rows.append((j + 1, title, "|".join(dict.fromkeys(g))))
    return rows


# ---------------------------------------------------------------------------------------- users


def history_lengths(cfg: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    """Log-normal lengths clipped to [min_history, longest], their sum brought to the target."""
    n, lo, hi = cfg.users, cfg.min_history, cfg.longest()
    z = rng.standard_normal(n)
    mean = cfg.interactions / n
    scale = np.log(mean) - cfg.length_sigma**2 / 2
    for _ in range(30):  # clipping moves the mean: correct the scale until the sum is right
        lengths = np.clip(np.rint(np.exp(scale + cfg.length_sigma * z)), lo, hi).astype(np.int64)
        total = int(lengths.sum())
        if abs(total - cfg.interactions) <= max(1, cfg.interactions // 1000):
            break
        scale += np.log(cfg.interactions / total)
    return lengths


def user_tastes(cfg: SynthConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Primary and secondary cluster of every user; cluster sizes uneven (weight (rank+1)^-0.5)."""
    c = cfg.num_clusters()
    w = (np.arange(c) + 1.0) ** -0.5
    w = w[rng.permutation(c)]
    primary = rng.choice(c, size=cfg.users, p=w / w.sum())
    secondary = rng.choice(c, size=cfg.users, p=w / w.sum())
    return primary, secondary


def chunk_histories(cfg: SynthConfig, cat: Catalogue, lengths: np.ndarray, primary: np.ndarray,
                    secondary: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(local user index, item index) of one chunk's interactions, grouped by user in history order,
    no item twice per user. Slots are drawn with some oversampling and de-duplicated; users still
    short are topped up in rounds that loosen the taste (their clusters may hold fewer items than
    they need), the last ones uniform over the whole catalogue, so it always ends."""
    n = len(lengths)
    need = lengths.copy()
    got_user: list[np.ndarray] = []
    got_item: list[np.ndarray] = []
    got_pos: list[np.ndarray] = []
    seen = np.zeros(0, dtype=np.int64)  # user * M + item of what is kept so far
    m = cfg.items
    for attempt in range(12):
        users = np.flatnonzero(need > 0)
        if len(users) == 0:
            break
        draws = np.ceil(need[users] * (1.3 if attempt == 0 else 2.0)).astype(np.int64) + 2
        slot_user = np.repeat(users, draws)
        # position in the history, 0..1, for the drift (top-ups land at random places in time)
        first = np.repeat(np.cumsum(draws) - draws, draws)
        frac = ((np.arange(len(slot_user)) - first) / np.repeat(draws, draws)) if attempt == 0 else rng.random(len(slot_user))
        if attempt < 4:
            in_taste = rng.random(len(slot_user)) < (cfg.affinity if attempt < 2 else cfg.affinity / 2)
            later = rng.random(len(slot_user)) < cfg.drift * frac
            clusters = np.where(in_taste, np.where(later, secondary[slot_user], primary[slot_user]), -1)
            items = cat.sample(clusters, rng.random(len(slot_user)))
        else:
            items = rng.integers(0, m, len(slot_user))
        keys = slot_user * m + items
        _, first_idx = np.unique(keys, return_index=True)
        keep = np.sort(first_idx)
        if len(seen):  # drop what an earlier round kept (np.isin hashes: slower than this on sorted keys)
            at = np.minimum(np.searchsorted(seen, keys[keep]), len(seen) - 1)
            keep = keep[seen[at] != keys[keep]]
        # at most `need` new items per user, in slot order
        ku = slot_user[keep]
        rank = np.arange(len(keep)) - np.searchsorted(ku, ku)  # keep is slot-ordered, so users are grouped
        keep = keep[rank < need[ku]]
        got_user.append(slot_user[keep])
        got_item.append(items[keep])
        got_pos.append(frac[keep])
        seen = np.sort(np.concatenate([seen, keys[keep]]))
        need -= np.bincount(slot_user[keep], minlength=n)
    if (need > 0).any():  # cannot happen with longest <= items; a guard, not a code path
        raise RuntimeError(f"{int((need > 0).sum())} users could not be given distinct items")
    user = np.concatenate(got_user)
    item = np.concatenate(got_item)
    pos = np.concatenate(got_pos)
    order = np.lexsort((pos, user))
    return user[order], item[order]


def chunk_times(cfg: SynthConfig, counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unix seconds of each interaction, in history order per user: a window of log-normal length
    (median 60 days) placed at random inside the log's span, the interactions at sorted random
    points of it."""
    span = cfg.days * 86400.0
    window = np.minimum(np.exp(np.log(60 * 86400.0) + 1.2 * rng.standard_normal(len(counts))), span)
    start = cfg.start_ts() + rng.random(len(counts)) * (span - window)
    user = np.repeat(np.arange(len(counts)), counts)
    offsets = rng.random(len(user))
    offsets = offsets[np.lexsort((offsets, user))]  # `user` is grouped: this sorts each user's own offsets
    return np.floor(start[user] + offsets * window[user]).astype(np.int64)


# ---------------------------------------------------------------------------------------- writing


def _write_rows(f: TextIO, *columns: np.ndarray) -> None:
    """Integer columns as CSV lines, one %-format per chunk (a Python call per line would cost more than the sampling)."""
    flat = np.stack([np.asarray(c, dtype=np.int64) for c in columns], axis=1).ravel().tolist()
    f.write((",".join(["%d"] * len(columns)) + "\n") * (len(flat) // len(columns)) % tuple(flat))


def _csv_text(value: str) -> str:
    return f'"{value}"' if ("," in value or '"' in value) else value


def generate(cfg: SynthConfig) -> dict[str, Any]:
    """Writes the files (see the module docstring) and returns what SYNTHETIC.json says."""
    cfg.check()
    out = Path(cfg.out)
    names = [INTERACTIONS, ITEMS, TRUTH_USERS, TRUTH_ITEMS, LABEL, "README.md"]
    present = [n for n in names if (out / n).exists()]
    if present and not cfg.overwrite:
        raise ConfigError(f"{out} already holds {', '.join(present)}; use another --out or --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    root = np.random.SeedSequence(cfg.seed)
    items_seq, users_seq = root.spawn(2)
    rng_items = np.random.default_rng(items_seq)
    cat = Catalogue.build(cfg, rng_items)
    rows = item_rows(cfg, cat, rng_items)
    with (out / ITEMS).open("w", encoding="utf-8") as f:
        f.write("item_id,title,genres\n")
        f.write("".join(f"{j},{_csv_text(t)},{g}\n" for j, t, g in rows))
    with (out / TRUTH_ITEMS).open("w", encoding="utf-8") as f:
        f.write("item_id,cluster,popularity_rank\n")
        _write_rows(f, np.arange(1, cfg.items + 1), cat.cluster, cat.rank + 1)
    rng_users = np.random.default_rng(users_seq)
    lengths = history_lengths(cfg, rng_users)
    primary, secondary = user_tastes(cfg, rng_users)
    with (out / TRUTH_USERS).open("w", encoding="utf-8") as f:
        f.write("user_id,primary_cluster,secondary_cluster\n")
        _write_rows(f, np.arange(1, cfg.users + 1), primary, secondary)
    item_counts = np.zeros(cfg.items, dtype=np.int64)
    in_taste = 0
    total = 0
    tmp = out / (INTERACTIONS + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write("user_id,item_id,timestamp\n")
        for k, s in enumerate(range(0, cfg.users, cfg.chunk_users)):
            e = min(s + cfg.chunk_users, cfg.users)
            rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 1, k]))  # per chunk: a stream of its own
            user, item = chunk_histories(cfg, cat, lengths[s:e], primary[s:e], secondary[s:e], rng)
            times = chunk_times(cfg, lengths[s:e], rng)
            _write_rows(f, user + s + 1, item + 1, times)
            item_counts += np.bincount(item, minlength=cfg.items)
            ic = cat.cluster[item]
            in_taste += int(((ic == primary[s:e][user]) | (ic == secondary[s:e][user])).sum())
            total += len(item)
            log.info("users written", done=e, of=cfg.users, interactions=total)
    tmp.replace(out / INTERACTIONS)
    seconds = time.time() - t0
    counts = np.sort(item_counts)[::-1]
    label = {
        "synthetic": True,
        "generator": "llmrec data synth",
        "generator_version": GENERATOR_VERSION,
        "config": to_dict(cfg) | {"clusters_used": cfg.num_clusters()},
        "counts": {"users": cfg.users, "items": cfg.items, "interactions": total,
                   "items_with_interactions": int((item_counts > 0).sum())},
        "history_length": {"mean": round(float(lengths.mean()), 2), "median": float(np.median(lengths)),
                           "p99": round(float(np.percentile(lengths, 99)), 1), "max": int(lengths.max())},
        "popularity": {"top_1pct_items_share": round(float(counts[: max(1, cfg.items // 100)].sum()) / max(total, 1), 4)},
        "taste": {"share_in_user_clusters": round(in_taste / max(total, 1), 4)},
        "files": {"interactions": INTERACTIONS, "items": ITEMS, "truth_users": TRUTH_USERS, "truth_items": TRUTH_ITEMS},
        "load_with": (f"--data.dataset interactions --data.path {out / INTERACTIONS} "
                      f"--data.items-path {out / ITEMS}"),
        "seconds": round(seconds, 1),
    }
    (out / LABEL).write_text(json.dumps(label, indent=2) + "\n")
    (out / "README.md").write_text(
        f"# SYNTHETIC data: not real users\n\nMade by `llmrec data synth` (generator version {GENERATOR_VERSION}) "
        f"with seed {cfg.seed}: {cfg.users} users, {cfg.items} items, {total} interactions in "
        f"{cfg.num_clusters()} taste clusters (Zipf popularity, exponent {cfg.zipf}; log-normal history lengths, "
        f"sigma {cfg.length_sigma}). Every parameter and what came out: {LABEL}. The truth files hold the clusters "
        f"the data was drawn from; no loader reads them.\n\nTrain on it with `{label['load_with']}`.\n")
    return label


def main(argv: list[str]) -> int:
    logs.setup()
    cfg = parse(SynthConfig, argv, prog="llmrec data synth", description=__doc__)
    label = generate(cfg)
    print(json.dumps({k: label[k] for k in ("counts", "history_length", "popularity", "taste", "seconds")}))
    print(f"synthetic data in {cfg.out}; train with: {label['load_with']}")
    return 0

