"""tfrec's Keras 3 retrieval loss against the reference, TensorFlow Recommenders' Retrieval task.

TFRS needs Keras 2 (``TF_USE_LEGACY_KERAS=1`` before TensorFlow loads), so it runs in a
child process with that variable set for the child alone; the library never sets it.
TFRS sums the per-example losses of a batch; it has no basket (``query_ids``) or extra
negatives, so those parts are checked against NumPy in ``test_retrieval_loss.py``.
"""

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from tfrec.tasks import RetrievalTask, mixed_log_q


def test_loss_equals_tfrs_retrieval(tmp_path):
    rng = np.random.default_rng(3)
    batch, dim, items = 16, 8, 10
    queries = rng.normal(size=(batch, dim)).astype("float32")
    candidates = rng.normal(size=(batch, dim)).astype("float32")
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    candidates /= np.linalg.norm(candidates, axis=1, keepdims=True)
    ids = rng.integers(0, items, size=batch)  # repeats: accidental hits happen
    log_q = mixed_log_q(rng.integers(1, 50, size=items), batch, 0)
    cases = [{"name": f"t{t}-hits{h}-logq{q}", "temperature": t, "remove_accidental_hits": h, "log_q": q}
             for t, h, q in itertools.product([0.05, 1.0], [False, True], [False, True])]
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, queries=queries, candidates=candidates, ids=ids, log_q=log_q, cases=json.dumps(cases))

    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1"}
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("tfrs_child.py")), str(inputs)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    reference = json.loads(done.stdout.strip().splitlines()[-1])
    assert reference["tf_keras"].startswith("tf_keras")  # the child really ran Keras 2
    assert "TF_USE_LEGACY_KERAS" not in os.environ
    for case in cases:
        task = RetrievalTask(temperature=case["temperature"], remove_accidental_hits=case["remove_accidental_hits"],
                             log_q=log_q if case["log_q"] else None)
        ours = float(np.sum(task(queries, candidates, ids).numpy()))
        np.testing.assert_allclose(ours, reference["losses"][case["name"]], rtol=1e-4, err_msg=case["name"])
