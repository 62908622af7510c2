"""The export in the loaders its users run: graph mode with only the main input, `tfrec verify`,
`saved_model_cli run`, and the requests a model must refuse by itself (stock TF Serving has no
server of ours in front of it)."""

import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from serving.export import CANDIDATE, QUERY, RETRIEVE, RETRIEVE_SCANN, SEARCH, SIMILAR, export_models
from serving.items import read_items
from serving.saved_model import read_signature_defs
from serving.verify import ModelCheck, check_version, run_children, verify_export
from tfrec.app.cli import main as cli_main
from tfrec.errors import TfrecError

ALL_MODELS = (QUERY, CANDIDATE, RETRIEVE, RETRIEVE_SCANN, SIMILAR, SEARCH)


REFUSALS = [
    (SIMILAR, {"item_id": ["NOT-AN-ITEM"]}, "every item_id must be a catalogue item"),
    (RETRIEVE_SCANN, {"history": [["X"]], "k": 101}, "index.k = 100"),
    (CANDIDATE, {"text": ["a", "b"], "item_id": ["x"]}, "item_id must have one row per text"),
    (CANDIDATE, {"text": ["a"], "categories": [["toys"]]}, "no categorical fields"),
    (SEARCH, {"query": ["a", "b"], "history": [["x"]]}, "history must have one row per query"),
    (SEARCH, {"query": ["a"], "history_weight": float("nan")}, "history_weight must be a finite number"),
    (RETRIEVE, {"history": [["x"]], "category": "toys"}, "no category field"),
]


@pytest.fixture(scope="module")
def item_ids(export_dir):
    return list(read_items(export_dir))


def main_input_requests(item_ids: list[str]) -> list[tuple[str, dict]]:
    history = [item_ids[:3]]
    return [(QUERY, {"history": history}), (RETRIEVE, {"history": history}), (RETRIEVE_SCANN, {"history": history}),
            (SIMILAR, {"item_id": item_ids[:1]}), (CANDIDATE, {"text": ["RED ENAMEL MUG"]}),
            (SEARCH, {"query": ["red mug"]})]


def long_histories(item_ids: list[str]) -> tuple[list[str], list[str]]:
    """A history of ``export.max_history`` items, and a longer one that ends with it."""
    recent = (item_ids * 400)[:1000]
    return recent, [*(item_ids[::-1] * 300)[:1500], *recent]


def _key(name: str, request: dict) -> str:
    return json.dumps([name, request], sort_keys=True)


def graph_answers(export_dir: Path, requests: list[tuple[str, dict]]) -> dict[str, dict]:
    """Requests through the TF1 session loader (each also through the eager loader), every model
    in one fresh process, each in a graph of its own; answers by :func:`_key`."""
    by_model = {}
    for name, request in requests:
        by_model.setdefault(name, []).append(request)
    answers = {}
    found = run_children({export_dir / name / "1": sent for name, sent in by_model.items()})
    for (name, sent), answer in zip(by_model.items(), found, strict=True):
        assert answer["modules"] == []
        answers.update({_key(name, request): out for request, out in zip(sent, answer["graph"], strict=True)})
    return answers


@pytest.fixture(scope="module")
def answered(export_dir, item_ids):
    """Every graph-mode request of this module's tests on the session's export, sent at once:
    a process start costs more than the requests it answers."""
    recent, longer = long_histories(item_ids)
    requests = [*main_input_requests(item_ids), *[(name, request) for name, request, _ in REFUSALS],
                (RETRIEVE, {"history": [recent]}), (RETRIEVE, {"history": [longer]})]
    return graph_answers(export_dir, requests)


def graph_answer(answered: dict[str, dict], name: str, request: dict) -> dict:
    """The graph-mode answer of model ``name`` to ``request`` (one of those :func:`answered` sends)."""
    return answered[_key(name, request)]


def test_every_model_passes_verify(export_dir, capsys):
    checks = verify_export(export_dir)
    assert sorted(c.name for c in checks) == sorted(ALL_MODELS)
    for check in checks:
        assert check.ok, (check.name, check.problems)
    stock = {c.name: c.tf_serving for c in checks}
    assert stock[RETRIEVE_SCANN].startswith("needs a TF Serving built with ScaNN")
    assert all(stock[name] == ">= 2.20.0" for name in ALL_MODELS if name != RETRIEVE_SCANN)
    ops = {c.name: c.custom_ops for c in checks}
    assert set(ops[CANDIDATE].values()) == {"tensorflow_text"} and ops[QUERY] == {} and ops[RETRIEVE] == {}
    assert set(ops[RETRIEVE_SCANN].values()) == {"scann"}

    assert cli_main(["verify", "--export", str(export_dir)]) == 0
    table = capsys.readouterr().out
    assert "graph-mode load" in table and "tfrec_retrieve_scann" in table


def test_only_the_main_input_is_needed_in_graph_mode(export_dir, item_ids, answered):
    for name, request in main_input_requests(item_ids):
        out = graph_answer(answered, name, request)
        assert "error" not in out, (name, out)
        if "item_ids" in out:
            assert len(out["item_ids"][0]) == 20  # export.k, the SignatureDef's default
    defaults = read_signature_defs(export_dir / RETRIEVE / "1")["serving_default"].defaults
    assert sorted(defaults) == ["category", "exclude_history", "exclude_ids", "k"]


def test_saved_model_cli_run_with_only_history(export_dir, item_ids):
    cli = Path(sys.executable).with_name("saved_model_cli")
    history = json.dumps([item_ids[:2]])
    for name in (QUERY, RETRIEVE):
        done = subprocess.run([str(cli), "run", "--dir", str(export_dir / name / "1"), "--tag_set", "serve",
                               "--signature_def", "serving_default", "--input_exprs", f"history={history}"],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "Result for output key" in done.stdout
        assert ("query_vector" if name == QUERY else "item_ids") in done.stdout


def test_keras_variables_tracked_by_a_plain_module_are_caught(tmp_path):
    """The failure `tfrec verify` exists for: a tf.Module holding Keras 3 layers loads eagerly
    but cannot answer in graph mode."""
    dense = keras.layers.Dense(2)
    dense.build((None, 1))

    class Plain(tf.Module):
        def __init__(self):
            super().__init__()
            self.dense = dense

        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.string, name="history")])
        def serve(self, history):
            lengths = tf.cast(tf.reduce_sum(tf.strings.length(history), 1, keepdims=True), tf.float32)
            return {"query_vector": self.dense(lengths)}

    module = Plain()
    path = tmp_path / "plain" / "1"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    check = check_version("plain", path, ["a", "b"], ["t"], 0)
    assert check.loads_in_graph_mode and not check.answers_with_defaults and not check.ok
    assert any("Could not find variable" in p for p in check.problems), check.problems


def test_a_tf2_consumer_calls_serve_with_only_the_main_input(export_dir, item_ids):
    """``signatures["serving_default"]`` takes every input (TensorFlow's rule for signatures);
    the saved ``serve`` function keeps its defaults."""
    loaded = tf.saved_model.load(str(export_dir / RETRIEVE / "1"))
    out = loaded.serve(history=tf.constant([item_ids[:2]]))
    assert out["item_ids"].shape == (1, 20)
    with pytest.raises(TypeError, match="missing a required argument"):
        loaded.signatures["serving_default"](history=tf.constant([item_ids[:2]]))


@pytest.mark.parametrize("name, request_, message", REFUSALS)
def test_models_refuse_what_they_cannot_answer(answered, name, request_, message):
    out = graph_answer(answered, name, request_)
    assert "InvalidArgumentError" in out.get("error", ""), out
    assert message in out["error"]


def test_a_long_history_is_cut_to_its_most_recent_items(item_ids, answered):
    recent, longer = long_histories(item_ids)  # export.max_history, and more
    cut = graph_answer(answered, RETRIEVE, {"history": [recent]})
    whole = graph_answer(answered, RETRIEVE, {"history": [longer]})
    assert whole["item_ids"] == cut["item_ids"]
    np.testing.assert_allclose(whole["scores"], cut["scores"], atol=1e-5)


def test_models_config_names_the_servers_path_and_card_documents_signatures(export_dir):
    config = (export_dir / "models.config").read_text()
    assert f'base_path: "{export_dir.resolve()}/tfrec_retrieve"' in config
    card = json.loads((export_dir / "model_card.json").read_text())
    inputs = card["models"][RETRIEVE]["signature"]["inputs"]
    assert inputs["history"]["default"] == "required" and inputs["history"]["shape"] == [None, None]
    assert inputs["k"] == {"dtype": "int32", "shape": [], "default": 20, "meaning": inputs["k"]["meaning"]}
    assert inputs["exclude_ids"]["default"] == [] and "oldest first" in inputs["history"]["meaning"]
    assert "scale" in card["models"][RETRIEVE]["signature"]["outputs"]["scores"]["meaning"]


def test_model_base_path_and_a_failing_version_is_never_published(tiny, trained_model_dir, index_dir, tmp_path,
                                                                  monkeypatch):
    import serving.export as export

    out = tmp_path / "export"
    export_models(tiny, trained_model_dir, None, out, version=3, model_base_path="/models", verify=False)
    assert 'base_path: "/models/tfrec_query"' in (out / "models.config").read_text()

    def failing(versions, *args, **kwargs):
        return [ModelCheck(name, str(path), problems=["graph-mode load: refused"]) for name, path in versions.items()]

    monkeypatch.setattr(export, "check_versions", failing)
    with pytest.raises(TfrecError, match="failed its serving check"):
        export_models(tiny, trained_model_dir, None, out, version=4, force=True)  # no gate: the check fails first
    assert not list(out.glob("*/4")), "a failing version was left in place"
    assert not [p for p in out.rglob(".*") if p.is_dir()], "a staging folder was left behind"


def test_the_c_api_loader_answers_like_the_session_loader(export_dir, item_ids, answered):
    """TF_LoadSessionFromSavedModel, the loader of TF Serving and the C, C++, Java and Go
    bindings, through ctypes on the wheel's shared library, feeding only ``history``."""
    version = export_dir / QUERY / "1"
    signature = read_signature_defs(version)["serving_default"]
    output_op, output_index = signature.outputs["query_vector"].name.split(":")
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("c_api_child.py")),
                           str(Path(tf.__file__).parent), str(version),
                           signature.inputs["history"].name.split(":")[0], output_op, output_index, *item_ids[:3]],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["python_tensorflow_imported"] is False
    expected = graph_answer(answered, QUERY, {"history": [item_ids[:3]]})["query_vector"]
    np.testing.assert_allclose(answer["output"], expected, atol=1e-5)


def test_an_ensemble_with_relative_positions_serves_in_graph_mode(tiny, sample_data_dir, tmp_path):
    """``model.members`` and ``positions: relative`` change only what the towers compute: the
    exported models load, answer and agree with eager in the session loader, with core ops."""
    from serving.index import build_index
    from tests.conftest import tiny_config
    from tfrec.training.trainer import train

    config = tiny_config(tiny, "model.members=2", "model.user_tower.causal=true",
                         "model.user_tower.positions=relative", "train.epochs=1", "train.steps_per_epoch=3",
                         "index.num_leaves=20", "index.num_leaves_to_search=5", "index.reorder=100")
    train(config, sample_data_dir, tmp_path / "model")
    build_index(config, tmp_path / "model", tmp_path / "index")
    # export_models publishes nothing unless every staged model passes verify_export's checks.
    published = export_models(config, tmp_path / "model", tmp_path / "index", tmp_path / "export", version=1)
    assert sorted(published) == sorted(ALL_MODELS)
    request = {"history": [list(read_items(tmp_path / "export"))[:3]]}
    query = graph_answers(tmp_path / "export", [(QUERY, request)])[_key(QUERY, request)]
    vector = np.asarray(query["query_vector"], np.float32).reshape(-1)
    assert vector.shape == (2 * config.model.embedding_dim,)
    np.testing.assert_allclose(np.linalg.norm(vector), 1.0, rtol=1e-4)


def test_a_model_with_the_text_term_serves_in_graph_mode(tiny, sample_data_dir, tmp_path):
    """A frozen pretrained encoder gives both towers the fixed text part: the fitted weight and
    the text vectors travel inside the exported models, which answer in the session loader."""
    from serving.index import build_index
    from tests.conftest import tiny_config
    from tfrec.data import load_catalogue
    from tfrec.evaluation.comparison import evaluate
    from tfrec.evaluation.similar import similar_scale, similar_scorer
    from tfrec.models import load_model
    from tfrec.training.text_weight import DECAYS, WEIGHTS
    from tfrec.training.trainer import train

    config = tiny_config(tiny, "model.text_encoder.kind=pretrained", "model.text_encoder.sequence_length=8",
                         "model.text_term=true",
                         "model.members=2", "model.user_tower.causal=true", "train.epochs=1",
                         "train.steps_per_epoch=3", "train.validation_users=200",
                         "index.num_leaves=20", "index.num_leaves_to_search=5", "index.reorder=100")
    summary = train(config, sample_data_dir, tmp_path / "model")
    assert len(summary["text_weight_validation"]) == 1 + (len(WEIGHTS) - 1) * len(DECAYS)
    model = load_model(tmp_path / "model")
    weight = float(model.user_tower.text_weight.numpy())
    assert round(weight, 3) == summary["text_weight"]
    assert round(float(model.user_tower.text_decay.numpy()), 3) == summary["text_decay"]
    # Evaluation measures tfrec_similar at equal and at the fitted text weight and keeps one.
    similar = evaluate(tiny_config(config, "eval.baselines=[]"), sample_data_dir, tmp_path / "model")["similar_items"]
    assert similar["candidates"] == {"equal": 0.5, "fitted": pytest.approx(weight)}
    assert similar["text_weight"] == similar["candidates"][similar["chosen"]]
    build_index(config, tmp_path / "model", tmp_path / "index")
    published = export_models(config, tmp_path / "model", tmp_path / "index", tmp_path / "export", version=1)
    assert sorted(published) == sorted(ALL_MODELS)
    history = list(read_items(tmp_path / "export"))[:3]
    request = {"history": [history]}
    answers = graph_answers(tmp_path / "export", [(QUERY, request), (SIMILAR, {"item_id": history[:1]})])
    # The served tfrec_similar is the evaluated one: the chosen weight's ranking and scores.
    vectors = model.item_vectors().numpy()
    item = load_catalogue(tmp_path / "model" / "catalogue").index_of()[history[0]]
    scale = similar_scale(model.user_tower.trained_dim, model.user_tower.text_dim, similar["text_weight"])
    expected = similar_scorer(vectors, scale)([np.array([item])])[0]
    expected[item] = -np.inf
    served = graph_answer(answers, SIMILAR, {"item_id": history[:1]})
    np.testing.assert_allclose(np.asarray(served["scores"]).reshape(-1), np.sort(expected)[::-1][:config.export.k],
                               rtol=1e-4, atol=1e-5)
    best = load_catalogue(tmp_path / "model" / "catalogue").ids[int(np.argmax(expected))]
    assert np.asarray(served["item_ids"]).reshape(-1)[0] in (best, best.encode())
    query = graph_answer(answers, QUERY, request)
    vector = np.asarray(query["query_vector"], np.float32).reshape(-1)
    trained = 2 * config.model.embedding_dim
    assert vector.shape == (trained + model.item_tower.text_dim,)
    # The query's parts carry (1 - w) and w: the trained part has norm 1 - w, the text part w.
    np.testing.assert_allclose(np.linalg.norm(vector[:trained]), 1.0 - weight, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(vector[trained:]), weight, rtol=1e-4, atol=1e-6)


def test_a_model_propagating_its_ids_over_the_item_graph_serves_in_graph_mode(tiny, sample_data_dir, tmp_path):
    """``model.graph.propagate: ids`` keeps the training split's graph inside the item tower: the
    exported models load and answer in the session loader, and a catalogue item's candidate
    vector is its indexed vector, propagated id part included."""
    from serving.index import build_index
    from tests.conftest import tiny_config
    from tfrec.data import load_catalogue
    from tfrec.models import load_model
    from tfrec.training.trainer import train

    config = tiny_config(tiny, "model.graph.propagate=ids", "model.graph.hops=2", "model.graph.neighbours=5",
                         "train.epochs=1", "train.steps_per_epoch=3",
                         "index.num_leaves=20", "index.num_leaves_to_search=5", "index.reorder=100")
    train(config, sample_data_dir, tmp_path / "model")
    model = load_model(tmp_path / "model")
    assert model.item_tower.graph == "ids" and model.item_tower.graph_edges > model.num_items  # self-loops, edges
    assert np.abs(model.item_tower.id_embedding[0].embeddings.numpy()).sum() > 0  # trained through the graph
    build_index(config, tmp_path / "model", tmp_path / "index")
    published = export_models(config, tmp_path / "model", tmp_path / "index", tmp_path / "export", version=1)
    assert sorted(published) == sorted(ALL_MODELS)
    texts = read_items(tmp_path / "export")
    items = list(texts)
    requests = [(QUERY, {"history": [items[:3]]}), (CANDIDATE, {"text": [texts[items[0]]], "item_id": [items[0]]})]
    answers = graph_answers(tmp_path / "export", requests)
    query = np.asarray(graph_answer(answers, *requests[0])["query_vector"], np.float32).reshape(-1)
    np.testing.assert_allclose(np.linalg.norm(query), 1.0, rtol=1e-4)
    candidate = np.asarray(graph_answer(answers, *requests[1])["item_vector"], np.float32).reshape(-1)
    row = list(load_catalogue(tmp_path / "model" / "catalogue").ids).index(items[0])
    np.testing.assert_allclose(candidate, model.item_vectors().numpy()[row], atol=1e-5)
