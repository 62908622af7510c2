"""Training under MultiWorkerMirroredStrategy: two worker processes on localhost, one TF_CONFIG each."""

import json
import os
import re
import socket
import subprocess
import sys

from tests.conftest import config_yaml, tiny_config


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_workers_train_the_same_model(sample_config, sample_data_dir, tmp_path):
    config = tiny_config(sample_config, "train.strategy=multi_worker", "train.epochs=1", "train.steps_per_epoch=4",
                         "model.repeat_term=false")
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(config_yaml(config))
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    out = tmp_path / "model"
    command = [sys.executable, "-m", "tfrec.app.cli", "train", "--config", str(config_path),
               "--data", str(sample_data_dir), "--output", str(out)]
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = {**os.environ, "TF_CONFIG": json.dumps(tf_config), "PYTHONUNBUFFERED": "1"}
        processes.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                          text=True))
    outputs = []
    for process in processes:
        stdout, _ = process.communicate(timeout=600)
        outputs.append(stdout)
        assert process.returncode == 0, stdout[-4000:]
    digests = [re.search(r"Weights digest: (\w+)", text).group(1) for text in outputs]
    assert digests[0] == digests[1]  # every step's gradients were all-reduced across the two workers
    assert all("2 replica(s)" in text for text in outputs)
    assert (out / "model.keras").exists()  # written by the chief (worker 0) only
    assert [h["epoch"] for h in json.loads((out / "history.json").read_text())] == [1]
