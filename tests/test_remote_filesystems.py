"""Every stage with every path a URL: preprocess -> train -> evaluate -> index -> export on
TensorFlow's in-process ``ram://`` filesystem, checked against the local run of the same data.

TensorFlow reads and writes ``ram://`` itself; Beam gets it from :class:`RamFileSystem`, a
Beam ``FileSystem`` for the ``ram`` scheme written over ``tf.io.gfile`` (Beam registers a
``FileSystem`` subclass by its scheme as soon as the class exists). The in-memory
DirectRunner runs the job in this process, so both see the same files. No path here is
local: a stage that used ``pathlib`` or ``open`` on one would fail or write beside the
test instead.
"""

import gzip
import io
import json
import posixpath
import uuid

import numpy as np
import pytest
import tensorflow as tf
from apache_beam.io.filesystem import BeamIOError, CompressedFile, CompressionTypes, FileMetadata, FileSystem

from tests.conftest import tiny_config
from tfrec import fileio, layout
from tfrec.config import apply_overrides, config_from_dict

EVAL = ["eval.baselines=[most_popular,repeat]", "eval.bootstrap_resamples=20"]


class _Writer(io.RawIOBase):
    """A ``GFile`` opened for writing that counts its bytes (``ram://`` has no ``Tell``)."""

    mode = "wb"

    def __init__(self, path: str):
        super().__init__()
        self._file, self._position = tf.io.gfile.GFile(path, "wb"), 0

    def writable(self):
        return True

    def write(self, data):
        self._file.write(bytes(data))
        self._position += len(data)
        return len(data)

    def tell(self):
        return self._position

    def close(self):
        if not self.closed:
            self._file.close()
        super().close()


class RamFileSystem(FileSystem):
    """Beam's view of TensorFlow's ``ram://`` filesystem (through ``tf.io.gfile``)."""

    @classmethod
    def scheme(cls):
        return "ram"

    def join(self, basepath, *paths):
        return posixpath.join(basepath, *paths)

    def split(self, path):
        return posixpath.split(path)

    def mkdirs(self, path):
        tf.io.gfile.makedirs(path)

    def has_dirs(self):
        return True

    def _list(self, dir_or_prefix):
        if not tf.io.gfile.exists(dir_or_prefix):
            return
        for root, _, files in tf.io.gfile.walk(dir_or_prefix):
            for name in files:
                path = posixpath.join(root, name)
                yield FileMetadata(path, tf.io.gfile.stat(path).length, 0.0)

    def _open(self, path, mode, compression_type):
        compression_type = FileSystem._get_compression_type(path, compression_type)
        raw = _Writer(path) if mode == "wb" else tf.io.gfile.GFile(path, mode)
        return raw if compression_type == CompressionTypes.UNCOMPRESSED else CompressedFile(raw, compression_type)

    def create(self, path, mime_type="application/octet-stream", compression_type=CompressionTypes.AUTO):
        tf.io.gfile.makedirs(posixpath.dirname(path))
        return self._open(path, "wb", compression_type)

    def open(self, path, mime_type="application/octet-stream", compression_type=CompressionTypes.AUTO):
        return self._open(path, "rb", compression_type)

    def copy(self, source_file_names, destination_file_names):
        for source, destination in zip(source_file_names, destination_file_names):
            tf.io.gfile.copy(source, destination, overwrite=True)

    def rename(self, source_file_names, destination_file_names):
        errors = {}
        for source, destination in zip(source_file_names, destination_file_names):
            try:
                tf.io.gfile.makedirs(posixpath.dirname(destination))
                tf.io.gfile.rename(source, destination, overwrite=True)
            except tf.errors.OpError as e:
                errors[(source, destination)] = e
        if errors:
            raise BeamIOError("rename failed", errors)

    def exists(self, path):
        return tf.io.gfile.exists(path)

    def size(self, path):
        return tf.io.gfile.stat(path).length

    def last_updated(self, path):
        return tf.io.gfile.stat(path).mtime_nsec / 1e9

    def checksum(self, path):
        return str(self.size(path))

    def metadata(self, path):
        return FileMetadata(path, self.size(path), self.last_updated(path))

    def delete(self, paths):
        for path in paths:
            fileio.remove(path)


@pytest.fixture(scope="module")
def root() -> str:
    """A fresh ``ram://`` folder (its files live until the test process ends)."""
    base = f"ram://remote-{uuid.uuid4().hex[:8]}"
    return base


@pytest.fixture(scope="module")
def remote_inputs(root, retail_sample, sample_config):
    """The sample log copied into ``ram://``, and the local run's config reading it from there."""
    path = f"{root}/logs/{retail_sample.name}"
    fileio.copy(str(retail_sample), path)
    paths = f"data.interactions.paths={json.dumps([path])}"
    return config_from_dict(apply_overrides(sample_config.to_dict(), [paths])), path


def _records(data_dir: str, split: str) -> list[bytes]:
    files = fileio.glob(fileio.join(data_dir, split, f"*{layout.SHARD_SUFFIX}"))
    assert files, f"no {split} shards in {data_dir}"
    return sorted(tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator())


def _without_timings(value):
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if "seconds" not in k}
    return value


def test_the_beam_job_reads_and_writes_a_url_filesystem(root, remote_inputs, sample_data_dir, retail_sample):
    from pipelines.preprocess import run_preprocess

    config, remote_log = remote_inputs
    data = f"{root}/data"
    run_preprocess(config, data)
    for split in layout.SPLITS:
        assert _records(data, split) == _records(str(sample_data_dir), split), split
    for name in (layout.VOCAB_FILE, layout.ITEMS_FILE):
        local = fileio.read_bytes(fileio.join(sample_data_dir, name))
        assert gzip.decompress(fileio.read_bytes(fileio.join(data, name))) == gzip.decompress(local) \
            if name.endswith(".gz") else fileio.read_bytes(fileio.join(data, name)) == local, name
    remote_stats = json.loads(fileio.read_text(fileio.join(data, layout.STATS_FILE)).replace(remote_log, "LOG"))
    local_stats = json.loads(fileio.read_text(fileio.join(sample_data_dir, layout.STATS_FILE))
                             .replace(str(retail_sample), "LOG"))
    assert remote_stats.pop("config_fingerprint") != local_stats.pop("config_fingerprint")  # the paths differ
    assert remote_stats == local_stats
    assert fileio.glob(fileio.join(data, layout.REJECTED_DIR, f"*{layout.REJECTED_SUFFIX}"))


def test_train_evaluate_index_export_on_urls_equal_the_local_run(root, tiny, sample_data_dir, trained_model_dir,
                                                                 index_dir, export_dir, tmp_path):
    from serving.export import export_models
    from serving.index import IndexCatalogue, build_index
    from serving.saved_model import load_serving_signature
    from serving.verify import check_version
    from tfrec.config import load_config
    from tfrec.config.derived import resolve
    from tfrec.data import load_stats
    from tfrec.evaluation.comparison import evaluate
    from tfrec.training.trainer import train

    data, model, index, export = (f"{root}/{name}" for name in ("same-data", "model", "index", "export"))
    fileio.copy_tree(str(sample_data_dir), data)  # the local run's own input: training is deterministic
    train(tiny, data, model)
    local_vectors = np.load(fileio.join(trained_model_dir, layout.VECTORS_FILE))
    remote_vectors = np.load(io.BytesIO(fileio.read_bytes(fileio.join(model, layout.VECTORS_FILE))))
    np.testing.assert_allclose(remote_vectors["item_vectors"], local_vectors["item_vectors"], atol=1e-6)
    np.testing.assert_allclose(remote_vectors["query_vectors"], local_vectors["query_vectors"], atol=1e-6)
    resolved = resolve(tiny, load_stats(str(sample_data_dir)))  # what the data decided is written out
    assert load_config(fileio.join(model, layout.CONFIG_FILE)).to_dict() == resolved.to_dict()  # read from a URL

    evaluated = tiny_config(tiny, *EVAL)
    local_model = str(tmp_path / "model")
    fileio.copy_tree(str(trained_model_dir), local_model)
    remote_metrics = evaluate(evaluated, data, model)
    assert _without_timings(remote_metrics) == _without_timings(evaluate(evaluated, str(sample_data_dir), local_model))
    assert fileio.read_json(fileio.join(model, layout.METRICS_FILE)) == json.loads(json.dumps(remote_metrics))

    build_index(tiny, model, index)
    local_index, remote_index = IndexCatalogue.load(index_dir), IndexCatalogue.load(index)
    assert list(remote_index.ids) == list(local_index.ids) and list(remote_index.texts) == list(local_index.texts)
    np.testing.assert_allclose(remote_index.vectors, local_index.vectors, atol=1e-6)

    export_models(tiny, model, index, export, version=1, verify=False)
    assert fileio.listdir(export) == sorted(p.name for p in export_dir.iterdir() if not p.name.startswith("."))
    histories = tf.constant([list(local_index.ids[i:i + 3]) for i in range(0, 60, 3)])
    remote = load_serving_signature(export, "tfrec_retrieve")(history=histories, k=10)
    local = load_serving_signature(str(export_dir), "tfrec_retrieve")(history=histories, k=10)
    assert remote["item_ids"].numpy().tolist() == local["item_ids"].numpy().tolist()
    np.testing.assert_allclose(remote["scores"].numpy(), local["scores"].numpy(), atol=1e-5)
    # ScaNN's index is trained and tuned anew (k-means, timings), so its lists are held to the exact ones.
    scann = load_serving_signature(export, "tfrec_retrieve_scann")(history=histories, k=10)["item_ids"].numpy()
    exact = remote["item_ids"].numpy()
    assert np.mean([len(set(a) & set(e)) / 10 for a, e in zip(scann, exact)]) >= 0.9
    # TF Serving's graph-mode loader in a fresh process, which cannot see this one's ram://: a local copy.
    check = check_version("tfrec_query", fileio.join(export, "tfrec_query", "1"), list(local_index.ids[:6]), [])
    assert check.ok, check.problems
