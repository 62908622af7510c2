"""What a training step of the item tower costs: Keras' Adam against ``LazyAdam``.

For each catalogue size, builds the item tower (frozen text vectors, a text projection and
an ``items x dim`` id table), then times a compiled step as the trainer runs it (the vectors
of ``--rows`` ids, a loss, the gradients, ``apply_gradients``) with ``train.optimizer: adam``
and ``lazy_adam``, alternating, ``--runs`` times ``--steps`` steps. Prints the median
milliseconds per step and writes ``bench/results/optimizer.json``.

    python bench/optimizer.py [--items 10000 100000 1000000] [--rows 2048] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import keras
import numpy as np
import tensorflow as tf
from benchlib import ROOT, machine, write_json

from tfrec.models import ItemTower
from tfrec.training.optimizers import LazyAdam

OPTIMIZERS = {"adam": keras.optimizers.Adam, "lazy_adam": LazyAdam}


TEXT_DIM = 16


def compiled_step(items: int, dim: int, optimizer_name: str):
    tower = ItemTower(items, dim, TEXT_DIM, hidden_dim=64)
    tower.set_catalogue(text_vectors=np.random.default_rng(0).normal(size=(items, TEXT_DIM)).astype("float32"))
    tower(tf.constant([0]))
    variables = tower.trainable_variables
    optimizer = OPTIMIZERS[optimizer_name](learning_rate=1e-3)
    optimizer.build(variables)
    target = tf.random.stateless_normal([dim], seed=(0, 2))

    @tf.function
    def step(ids):
        with tf.GradientTape() as tape:
            loss = -tf.reduce_sum(tower(ids, training=True) * target)
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--rows", type=int, default=2048, help="item ids per step (repeats allowed)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    load = os.getloadavg()
    results = []
    for items in args.items:
        steps = {name: compiled_step(items, args.dim, name) for name in OPTIMIZERS}
        ids = tf.random.stateless_uniform([args.rows], seed=(0, 1), maxval=items, dtype=tf.int64)
        for step in steps.values():
            step(ids)  # trace and warm up
        timings = {name: [] for name in OPTIMIZERS}
        for _ in range(args.runs):
            for name, step in steps.items():
                start = time.perf_counter()
                for _ in range(args.steps):
                    step(ids)
                timings[name].append(1000 * (time.perf_counter() - start) / args.steps)
        medians = {name: statistics.median(values) for name, values in timings.items()}
        results.append({"items": items, "ms_per_step": timings, "median_ms_per_step": medians,
                        "speedup": medians["adam"] / medians["lazy_adam"]})
        print(f"{items:>10,} items: adam {medians['adam']:8.2f} ms/step, lazy_adam {medians['lazy_adam']:8.2f} "
              f"ms/step, x{results[-1]['speedup']:.1f}")
    write_json(ROOT / "bench" / "results" / "optimizer.json",
               {"dim": args.dim, "rows": args.rows, "steps": args.steps, "runs": args.runs,
                "results": results, "machine": machine(load)})


if __name__ == "__main__":
    main()
