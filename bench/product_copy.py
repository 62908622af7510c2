"""Product copy: how often the generator's pitches are published, what they say, how fast, how fluent.

For the ``--items`` most bought products of a data folder (``tfrec preprocess``'s output; no
trained model needed; after the ``--skip`` most bought when given), writes a pitch as
``tfrec copy`` does (N samples as one batch, the guard, the best passing sample by MiniLM
similarity to the title, else the template) and
reports, under ``shops.<name>``:

- ``generated_share``: the share published as generated, not as a template;
- ``invented_facts``, ``repeated_ngrams``: published pitches holding a number, price, URL or
  capitalised name absent from the title, or a repeated 3-gram, counted by a check written
  apart from the guard's (``flagged`` lists them);
- ``describes_product``: top-10 rate of MiniLM text search over the whole catalogue with the
  pitch's words minus the title's, for the generated pitches and for the template sentences
  of the same products;
- ``seconds_per_pitch``: median over the calls after the first (compilation), each call's time
  over its products (``copy.prompts_per_call`` at a time, as ``tfrec copy`` runs);
- ``perplexity_titles``: the generator's perplexity on ``--titles`` catalogue titles, beside
  ``unigram_perplexity_titles``, a unigram model over the same tokenizer fitted on the other titles;
- ``personalised``: the generated share of "because you bought X" prompts on ``--personalised``
  products, each paired with another of the products (decides ``copy.personalise``);
- ``examples``: 20 published pitches with their titles and the guard's verdict.

    python bench/product_copy.py --data runs/online_retail/data --items 200 --output bench/results/copy.json
    python bench/product_copy.py --data runs/amazon_toys/data --shop amazon_toys --config configs/amazon_toys.yaml \\
        --items 200 --output bench/results/copy.json
    python bench/product_copy.py --data runs/online_retail/data --skip 200 --items 80 --titles 200 \\
        --personalised 0 [--without-examples] --output bench/results/copy_choice.json   # choosing the prompts

A second shop is added to an existing ``--output`` file beside the first. (Not ``bench/copy.py``:
a script of that name would stand in for the standard library's ``copy`` in every script of
this folder.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
from benchlib import ROOT, machine, write_json

from serving.items import read_items
from tfrec.config import TextEncoderConfig, load_config
from tfrec.copywriter import generator as generator_module
from tfrec.copywriter.generator import Generator, Sampling, instruction
from tfrec.copywriter.guard import choose, display_title, template
from tfrec.data.readers import load_catalogue
from tfrec.models.text import pretrained_pipeline

EXAMPLES = 20
PLAIN_CAPITALS = ("I", "Christmas", "Easter", "Halloween")
"""Capitalised words that name no brand, place or person."""
TOP = 10


def independent_facts(pitch: str, title: str, because: str | None = None) -> list[str]:
    """Numbers, currency, URLs and mid-sentence capitalised words of ``pitch`` absent from the inputs
    (a plain reading, apart from the guard's rules; a word is present in the singular or plural)."""
    source = f"{title} {because or ''}".lower()
    source_words = set(re.findall(r"[a-z0-9]+", source))
    found = [n for n in re.findall(r"\d+(?:[.,]\d+)?", pitch) if n not in source]
    found += re.findall(r"[$£€¥]|https?://\S+|www\.\S+|\S+\.com\b", pitch)
    for sentence in re.split(r"(?<=[.!?])\s+", pitch):
        for token in sentence.split()[1:]:
            if set(re.findall(r"[a-z0-9]+", token.lower())) <= source_words:
                continue  # the title's own word, whole ("LeapPad2", "S107G")
            for word in re.findall(r"[A-Za-z]+", token):
                known = bool({word.lower(), word.lower().rstrip("s"), word.lower() + "s"} & source_words)
                if word[:1].isupper() and not known and word not in PLAIN_CAPITALS:
                    found.append(word)
    return found


def has_repeated_trigram(pitch: str) -> bool:
    tokens = re.sub(r"[^\w\s]", " ", pitch.lower()).split()
    grams = list(zip(tokens, tokens[1:], tokens[2:]))
    return len(grams) != len(set(grams))


def without_title_words(pitch: str, title: str) -> str:
    drop = {w.lower() for w in re.findall(r"\w+", title)}
    return " ".join(w for w in re.findall(r"\w+", pitch) if w.lower() not in drop and w.lower().rstrip("s") not in drop)


def describes(texts: list[str], item_rows: list[int], embed, catalogue_vectors: np.ndarray) -> float | None:
    """Share of ``texts`` whose text search over the catalogue finds their own item in the top 10."""
    if not texts:
        return None
    vectors = embed.encode(texts, verbose=False)
    scores = vectors @ catalogue_vectors.T
    top = np.argsort(-scores, axis=1)[:, :TOP]
    return round(float(np.mean([row in top[i] for i, row in enumerate(item_rows)])), 4)


def pitches(generator: Generator, embed, titles: list[str], because: list[str | None]) -> tuple[list, list[float]]:
    """A verdict per title (as ``tfrec copy`` publishes: ``copy.prompts_per_call`` products per
    call), and the seconds per pitch of each call (its time over its products)."""
    score = lambda texts, title: (embed.encode(texts, verbose=False) @ embed.encode([title], verbose=False)[0]).tolist()  # noqa: E731
    verdicts, seconds, per_call = [], [], generator.sampling.prompts
    for start in range(0, len(titles), per_call):
        began = time.perf_counter()
        pairs = list(zip(titles[start:start + per_call], because[start:start + per_call]))
        texts = [instruction(title, bought) for title, bought in pairs]
        for (title, bought), text, samples in zip(pairs, texts, generator.generate_many(texts)):
            verdicts.append(choose(samples, title, bought, generator.prompt(text), score=score))
        seconds.append((time.perf_counter() - began) / len(pairs))
        for number, verdict in enumerate(verdicts[start:], start + 1):
            print(f"  {number}/{len(titles)} {verdict.source:9s} {seconds[-1]:5.1f}s  {verdict.pitch}", flush=True)
    return verdicts, seconds


def perplexities(generator: Generator, titles: list[str], others: list[str], batch: int = 32) -> tuple[float, float]:
    """The generator's perplexity on ``titles``, each read where its prompts put a title
    (``title_context``), and a unigram model's over the same tokens (fitted on ``others``
    tokenized alike, add-one smoothing over the tokenizer's vocabulary)."""
    context = generator.title_context()
    scored = []
    for start in range(0, len(titles), batch):
        scored += generator.token_losses(titles[start:start + batch], context)
    tokenizer = generator.causal_lm.preprocessor.tokenizer
    skip = len(np.asarray(tokenizer(context)).tolist())
    counts = Counter(t for text in others for t in np.asarray(tokenizer(context + text)).tolist()[skip:][:64])
    total, vocabulary = sum(counts.values()), tokenizer.vocabulary_size()
    unigram = [-math.log((counts[t] + 1) / (total + vocabulary)) for ids, _ in scored for t in ids]
    model = np.concatenate([losses for _, losses in scored])
    return round(float(np.exp(model.mean())), 2), round(float(math.exp(statistics.fmean(unigram))), 2)


def share(verdicts) -> float | None:
    return round(sum(v.source == "generated" for v in verdicts) / len(verdicts), 4) if verdicts else None


def shop_report(args, config) -> dict:
    catalogue = load_catalogue(args.data)
    texts = read_items(args.export) if args.export else dict(zip(catalogue.ids.tolist(), catalogue.texts.tolist()))
    ids = [i for i in catalogue.ids[np.argsort(-catalogue.counts, kind="stable")].tolist() if texts.get(i)]
    chosen = ids[args.skip:args.skip + args.items]
    c = config.copy
    generator = Generator.from_preset(c.generator, os.path.expanduser(c.model_cache),
                                      Sampling(c.samples, c.max_length, c.top_k, c.temperature, c.seed,
                                               c.prompts_per_call))
    embed = pretrained_pipeline(TextEncoderConfig(preset=c.scorer, sequence_length=64))
    titles = [texts[i] for i in chosen]
    print(f"{args.shop}: {len(chosen)} products", flush=True)
    verdicts, seconds = pitches(generator, embed, titles, [None] * len(titles))
    rng = np.random.default_rng(0)
    paired = chosen[:args.personalised]
    because = [texts[chosen[(k + 1 + int(rng.integers(len(chosen) - 1))) % len(chosen)]] for k in range(len(paired))]
    personal, _ = pitches(generator, embed, titles[:len(paired)], because) if paired else ([], [])
    generated = [k for k, v in enumerate(verdicts) if v.source == "generated"]
    published = [(titles[k], v.pitch) for k, v in enumerate(verdicts)]
    all_ids = catalogue.ids.tolist()
    row_of = {item: row for row, item in enumerate(all_ids)}
    catalogue_texts = [texts.get(i, t) for i, t in zip(all_ids, catalogue.texts.tolist())]
    catalogue_vectors = embed.encode(catalogue_texts, verbose=False)
    rows = [row_of[chosen[k]] for k in generated]
    eval_rows = rng.permutation(len(ids))
    eval_titles = [display_title(texts[ids[r]]) for r in eval_rows[:args.titles]]
    other_titles = [display_title(texts[ids[r]]) for r in eval_rows[args.titles:]] or eval_titles
    perplexity, unigram = perplexities(generator, eval_titles, other_titles)
    return {
        "generator": c.generator, "sampling": dataclasses.asdict(generator.sampling), "items": len(chosen),
        "skipped": args.skip,
        "generated_share": share(verdicts),
        "failed_rules": dict(sum((Counter(v.failed) for v in verdicts), Counter())),
        "invented_facts": sum(bool(independent_facts(p, t)) for t, p in published),
        "repeated_ngrams": sum(has_repeated_trigram(p) for _, p in published),
        "flagged": [{"title": t, "pitch": p, "facts": independent_facts(p, t), "repeated": has_repeated_trigram(p)}
                    for t, p in published if independent_facts(p, t) or has_repeated_trigram(p)],
        "describes_product": {
            "generated": describes([without_title_words(verdicts[k].pitch, titles[k]) for k in generated], rows,
                                   embed, catalogue_vectors),
            "template": describes([without_title_words(template(titles[k]), titles[k]) for k in generated], rows,
                                  embed, catalogue_vectors),
            "items": len(generated)},
        "seconds_per_pitch": round(statistics.median(seconds[1:] or seconds), 3),
        "first_pitch_seconds": round(seconds[0], 3),
        "perplexity_titles": perplexity, "unigram_perplexity_titles": unigram, "titles": len(eval_titles),
        "personalised": {"items": len(personal), "generated_share": share(personal)},
        "examples": [{"title": titles[k], "pitch": verdicts[k].pitch, "source": verdicts[k].source,
                      "failed_samples": verdicts[k].failed, "score": verdicts[k].score}
                     for k in (generated + [k for k in range(len(chosen)) if k not in generated])[:EXAMPLES]],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="output folder of `tfrec preprocess` (the catalogue)")
    parser.add_argument("--export", type=Path, help="an export folder: titles from its items.tsv")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "online_retail.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--shop", default="online_retail")
    parser.add_argument("--items", type=int, default=200, help="most bought products to write for")
    parser.add_argument("--skip", type=int, default=0,
                        help="start after the N most bought products: settings are chosen on products apart "
                             "from the reported ones (e.g. --skip 200 --items 80)")
    parser.add_argument("--without-examples", action="store_true",
                        help="prompts without the worked examples (generator.EXAMPLES): what they add")
    parser.add_argument("--titles", type=int, default=1000, help="titles the perplexities are measured on")
    parser.add_argument("--personalised", type=int, default=50, help="products given a personalised prompt too")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "copy.json")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    config = load_config(args.config, args.overrides)
    if args.without_examples:
        generator_module.EXAMPLES = ()
    report = {**shop_report(args, config), "worked_examples": not args.without_examples}
    existing = json.loads(args.output.read_text()) if args.output.exists() else {}
    shops = {**existing.get("shops", {}), args.shop: {**report, "machine": machine(load_before, ("keras-hub",))}}
    write_json(args.output, {"shops": shops})
    print(json.dumps({k: v for k, v in report.items() if k != "examples"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
