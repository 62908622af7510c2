"""The local model server over real SavedModels, through real HTTP and gRPC on 127.0.0.1.

One server (free ports, fast polling) serves a copy of the session's export, so that the
versions and models these tests add never reach the export other tests read. Answers are
checked against the SavedModels called directly in this process.
"""

import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import tensorflow as tf

from serving.client import GrpcClient, RestClient, ServingClientError
from serving.export import QUERY, RETRIEVE, RETRIEVE_SCANN, SIMILAR
from serving.server import ANY_PORT, ModelServer
from serving.server.process import ServerProcess

MAX_BATCH = 32
POLL_SECONDS = 0.2
EXPLICIT = {"k": 10, "exclude_history": False, "exclude_ids": [], "category": ""}


def item_ids(export: Path) -> list[str]:
    lines = (export / "items.tsv").read_text(encoding="utf-8").splitlines()[1:]
    return [line.split("\t")[0] for line in lines]


def histories(ids: list[str], count: int, seed: int = 7) -> list[list[str]]:
    """Random histories of 3 to 12 ids, padded at the front with empty ids to one length."""
    rng = np.random.default_rng(seed)
    rows = [list(rng.choice(ids, size=rng.integers(3, 13), replace=False)) for _ in range(count)]
    width = max(len(r) for r in rows)
    return [[""] * (width - len(r)) + r for r in rows]


def call_saved_model(path: Path, inputs: dict) -> dict[str, np.ndarray]:
    """The SavedModel's ``serving_default`` called in this process, strings decoded."""
    signature = tf.saved_model.load(str(path)).signatures["serving_default"]
    specs = signature.structured_input_signature[1]
    outputs = signature(**{name: tf.constant(value, specs[name].dtype) for name, value in inputs.items()})
    return {name: (np.char.decode(t.numpy().astype(bytes), "utf-8") if t.dtype == tf.string else t.numpy())
            for name, t in outputs.items()}


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="module")
def served(export_dir, tmp_path_factory) -> Path:
    """A copy of the session's export: the versions and models added here stay out of other tests' way."""
    out = tmp_path_factory.mktemp("served") / "export"
    shutil.copytree(export_dir, out)
    return out


@pytest.fixture(scope="module")
def server(served):
    with ModelServer(served, port=ANY_PORT, grpc_port=ANY_PORT, poll_seconds=POLL_SECONDS,
                     max_batch=MAX_BATCH) as running:
        yield running


@pytest.fixture(scope="module")
def rest(server):
    with RestClient(server.rest_url) as client:
        yield client


@pytest.fixture(scope="module")
def grpc_client(server):
    with GrpcClient(server.grpc_target) as client:
        yield client


@pytest.fixture(scope="module")
def known_id(served) -> str:
    return item_ids(served)[0]


@pytest.fixture(scope="module")
def requests_rows(served) -> list[list[str]]:
    return histories(item_ids(served), 12)


def test_the_server_loads_every_exported_model_and_says_where_it_listens(server, served):
    names = sorted(p.name for p in served.iterdir() if p.is_dir())
    assert RETRIEVE_SCANN in names, "the session export should hold the ScaNN model"
    assert sorted(server.registry.serving()) == names
    text = server.describe()
    for name in names:
        assert f"{name:<22} version 1" in text
    assert server.rest_url.startswith("http://127.0.0.1:") and server.rest_url in text
    assert server.grpc_target.startswith("127.0.0.1:") and server.grpc_target in text


@pytest.mark.parametrize("model", [RETRIEVE, RETRIEVE_SCANN])
def test_rest_and_grpc_answer_what_the_saved_model_answers(model, served, rest, grpc_client, requests_rows):
    if model == RETRIEVE_SCANN:
        import scann  # noqa: F401  (registers ScaNN's ops for the direct call)
    expected = call_saved_model(served / model / "1", {"history": requests_rows, **EXPLICIT})
    by_rest = rest.predict(model, {"history": requests_rows, **EXPLICIT})
    by_grpc = grpc_client.predict(model, {"history": requests_rows, **EXPLICIT})
    assert set(by_rest) == set(by_grpc) == set(expected) == {"item_ids", "scores", "because_ids", "because_scores"}
    assert by_rest["item_ids"].shape == (len(requests_rows), 10)
    for answer in (by_rest, by_grpc):
        np.testing.assert_array_equal(answer["item_ids"], expected["item_ids"])
        np.testing.assert_array_equal(answer["because_ids"], expected["because_ids"])
        np.testing.assert_allclose(answer["scores"], expected["scores"], rtol=1e-6)
    assert by_grpc["scores"].dtype == np.float32


def test_left_out_options_take_the_exported_defaults(tiny, served, rest, grpc_client, requests_rows):
    defaults = {"k": tiny.export.k, "exclude_history": tiny.export.exclude_history, "exclude_ids": [],
                "category": ""}
    expected = call_saved_model(served / RETRIEVE / "1", {"history": requests_rows, **defaults})["item_ids"]
    assert expected.shape == (len(requests_rows), tiny.export.k)
    np.testing.assert_array_equal(rest.predict(RETRIEVE, {"history": requests_rows})["item_ids"], expected)
    np.testing.assert_array_equal(grpc_client.predict(RETRIEVE, {"history": requests_rows})["item_ids"], expected)
    # Explicit options change the answer: they are not ignored.
    excluded = rest.predict(RETRIEVE, {"history": requests_rows, "k": 5, "exclude_history": True})["item_ids"]
    assert excluded.shape == (len(requests_rows), 5)
    for row, history in zip(excluded, requests_rows):
        assert not set(row) & set(history)


def test_row_and_columnar_forms_give_the_same_answers(server, rest, requests_rows):
    url = f"{server.rest_url}/v1/models/{RETRIEVE}:predict"
    columnar = requests.post(url, json={"inputs": {"history": requests_rows}}, timeout=30).json()["outputs"]
    named = requests.post(url, json={"instances": [{"history": h} for h in requests_rows]}, timeout=30).json()
    bare = requests.post(url, json={"instances": requests_rows}, timeout=30).json()
    for rows in (named["predictions"], bare["predictions"]):
        assert len(rows) == len(requests_rows)
        assert [r["item_ids"] for r in rows] == columnar["item_ids"]
        assert [r["scores"] for r in rows] == columnar["scores"]
    assert rest.predict_rows(RETRIEVE, [{"history": h} for h in requests_rows]) == named["predictions"]

    # A model with one output: TF Serving leaves the name out; the client puts it back.
    single = requests.post(f"{server.rest_url}/v1/models/{QUERY}:predict",
                           json={"inputs": {"history": requests_rows[:3]}}, timeout=30).json()
    assert isinstance(single["outputs"], list) and len(single["outputs"]) == 3
    vectors = rest.predict(QUERY, {"history": requests_rows[:3]})
    assert list(vectors) == ["query_vector"]
    np.testing.assert_allclose(vectors["query_vector"], single["outputs"])
    rows = requests.post(f"{server.rest_url}/v1/models/{QUERY}:predict",
                         json={"instances": requests_rows[:3]}, timeout=30).json()["predictions"]
    np.testing.assert_allclose(rows, single["outputs"])
    # The only required input may go unnamed; optional ones take their defaults.
    unnamed = requests.post(f"{server.rest_url}/v1/models/tfrec_candidate:predict",
                            json={"inputs": ["red enamel mug", "garden gnome"]}, timeout=30).json()["outputs"]
    assert np.array(unnamed).shape == (2, 16)


def test_status_and_metadata_over_rest_and_grpc(server, rest, grpc_client):
    expected = [{"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]
    body = requests.get(f"{server.rest_url}/v1/models/{RETRIEVE}", timeout=30).json()
    assert body == {"model_version_status": expected}
    assert rest.status(RETRIEVE, version=1) == grpc_client.status(RETRIEVE) == expected

    metadata = rest.metadata(RETRIEVE)
    assert metadata == grpc_client.metadata(RETRIEVE) == rest.metadata(RETRIEVE, version=1)
    assert metadata["model_spec"] == {"name": RETRIEVE, "signature_name": "", "version": "1"}
    signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
    inputs, outputs = signature["inputs"], signature["outputs"]
    assert set(inputs) == {"history", "k", "exclude_history", "exclude_ids", "category"}
    assert inputs["history"]["dtype"] == "DT_STRING"
    assert inputs["history"]["tensor_shape"]["dim"] == [{"size": "-1"}, {"size": "-1"}]
    assert inputs["k"]["dtype"] == "DT_INT32" and inputs["k"]["tensor_shape"] == {}
    assert set(signature["defaults"]) == {"k", "exclude_history", "exclude_ids", "category"}
    assert outputs["item_ids"]["dtype"] == "DT_STRING" and outputs["scores"]["dtype"] == "DT_FLOAT"


BAD_REST = [
    # (what, model path, body, HTTP status, words the error must hold)
    ("malformed JSON", RETRIEVE, b'{"inputs": {"history": [["a"]]', 400, "malformed JSON"),
    ("body not an object", RETRIEVE, b'[["a"]]', 400, "JSON object"),
    ("neither form", RETRIEVE, {"history": [["a"]]}, 400, "unknown key 'history'"),
    ("both forms", RETRIEVE, {"inputs": {"history": [["a"]]}, "instances": [["a"]]}, 400, "exactly one"),
    ("unknown model", "no_such_model", {"inputs": {"history": [["a"]]}}, 404, "unknown model 'no_such_model'"),
    ("unknown version", f"{RETRIEVE}/versions/7", {"inputs": {"history": [["a"]]}}, 404, "no version 7"),
    ("unknown input", RETRIEVE, {"inputs": {"histroy": [["a"]]}}, 400, "unknown input 'histroy'"),
    ("missing input", RETRIEVE, {"inputs": {"k": 3}}, 400, "missing input 'history'"),
    ("string for an int", RETRIEVE, {"inputs": {"history": [["a"]], "k": "ten"}}, 400, "input 'k' (int32)"),
    ("number for a string", RETRIEVE, {"inputs": {"history": [["a", 7]]}}, 400, "history[0][1] is 7"),
    ("int for a bool", RETRIEVE, {"inputs": {"history": [["a"]], "exclude_history": 1}}, 400,
     "input 'exclude_history' (bool)"),
    ("too few dimensions", RETRIEVE, {"inputs": {"history": ["a", "b"]}}, 400, "input 'history' has shape [2]"),
    ("list for a scalar", RETRIEVE, {"inputs": {"history": [["a"]], "k": [3]}}, 400, "input 'k' has shape [1]"),
    ("ragged history", RETRIEVE, {"inputs": {"history": [["a"], ["b", "c"]]}}, 400,
     "input 'history' is not rectangular"),
    ("batch over the limit", RETRIEVE, {"inputs": {"history": [["a"]] * (MAX_BATCH + 1)}}, 400,
     f"input 'history' carries a batch of {MAX_BATCH + 1}"),
    ("scalar in the row form", RETRIEVE, {"instances": [{"history": ["a"], "k": 3}]}, 400,
     "input 'k' of tfrec_retrieve is a single value per request"),
    ("instances naming different inputs", RETRIEVE, {"instances": [{"history": ["a"]}, {"exclude_ids": ["a"]}]},
     400, "instance 1 names inputs"),
]


@pytest.mark.parametrize("what, path, body, status, words", BAD_REST, ids=[case[0] for case in BAD_REST])
def test_bad_rest_requests_get_a_clear_error_and_the_server_keeps_serving(server, rest, known_id, what, path, body,
                                                                          status, words):
    url = f"{server.rest_url}/v1/models/{path}:predict"
    answer = requests.post(url, data=body if isinstance(body, bytes) else json.dumps(body), timeout=30)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert words in error, error
    assert rest.predict(SIMILAR, {"item_id": [known_id], "k": 2})["item_ids"].shape == (1, 2)


def test_an_error_raised_inside_the_model_is_a_bad_request_with_its_message(tiny, server, rest):
    assert not tiny.data.items.categorical_fields, "this test asks for a category of a catalogue without any"
    answer = requests.post(f"{server.rest_url}/v1/models/{RETRIEVE}:predict",
                           json={"inputs": {"history": [["a"]], "category": "Mugs"}}, timeout=30)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error.startswith(f"{RETRIEVE}: ") and "this catalogue has no category field" in error, error
    assert "Graph execution error" not in error and "{{node" not in error
    assert rest.status(RETRIEVE)[0]["state"] == "AVAILABLE"


def test_unknown_endpoints_and_verbs(server):
    assert requests.get(f"{server.rest_url}/v2/anything", timeout=30).status_code == 404
    assert requests.get(f"{server.rest_url}/v1/models/nope", timeout=30).status_code == 404
    answer = requests.post(f"{server.rest_url}/v1/models/{RETRIEVE}:classify", json={"examples": []}, timeout=30)
    assert answer.status_code == 400 and ":predict" in answer.json()["error"]
    answer = requests.get(f"{server.rest_url}/v1/models/{RETRIEVE}:predict", timeout=30)
    assert answer.status_code == 400 and "takes POST" in answer.json()["error"]


def test_the_rest_client_raises_the_servers_message(rest):
    with pytest.raises(ServingClientError, match="unknown input 'histroy'") as caught:
        rest.predict(RETRIEVE, {"histroy": [["a"]]})
    assert caught.value.code == 400
    with pytest.raises(ServingClientError, match="unknown model") as caught:
        rest.status("no_such_model")
    assert caught.value.code == 404


BAD_GRPC = [
    ("unknown model", "no_such_model", None, {"history": [["a"]]}, "NOT_FOUND", "unknown model 'no_such_model'"),
    ("unknown version", RETRIEVE, 7, {"history": [["a"]]}, "NOT_FOUND", "no version 7"),
    ("unknown input", RETRIEVE, None, {"histroy": [["a"]]}, "INVALID_ARGUMENT", "unknown input 'histroy'"),
    ("missing input", RETRIEVE, None, {"k": 3}, "INVALID_ARGUMENT", "missing input 'history'"),
    ("wrong dtype", RETRIEVE, None, {"history": [["a"]], "k": np.int64(3)}, "INVALID_ARGUMENT",
     "input 'k' must be int32, got int64"),
    ("wrong shape", RETRIEVE, None, {"history": ["a", "b"]}, "INVALID_ARGUMENT", "input 'history' has shape [2]"),
    ("batch over the limit", RETRIEVE, None, {"history": [["a"]] * (MAX_BATCH + 1)}, "INVALID_ARGUMENT",
     f"carries a batch of {MAX_BATCH + 1}"),
]


@pytest.mark.parametrize("what, model, version, inputs, code, words", BAD_GRPC, ids=[case[0] for case in BAD_GRPC])
def test_bad_grpc_requests_get_their_status_and_the_server_keeps_serving(grpc_client, known_id, what, model, version,
                                                                         inputs, code, words):
    with pytest.raises(ServingClientError) as caught:
        grpc_client.predict(model, inputs, version=version)
    assert caught.value.code == code
    assert words in caught.value.message, caught.value.message
    assert grpc_client.predict(SIMILAR, {"item_id": [known_id], "k": 2})["item_ids"].shape == (1, 2)


def test_grpc_status_and_metadata_errors(grpc_client):
    with pytest.raises(ServingClientError) as caught:
        grpc_client.status("no_such_model")
    assert caught.value.code == "NOT_FOUND"
    with pytest.raises(ServingClientError) as caught:
        grpc_client.metadata(RETRIEVE, version=9)
    assert caught.value.code == "NOT_FOUND" and "no version 9" in caught.value.message


def _add_version(model_dir: Path, source: str, version: str) -> None:
    """Copies a version under a temporary name inside the model folder, then renames it into place."""
    staging = model_dir / f".staging-{version}"
    shutil.copytree(model_dir / source, staging)
    os.rename(staging, model_dir / version)


def test_new_versions_and_models_are_picked_up_while_serving(server, served, rest, grpc_client):
    model_dir = served / SIMILAR
    probe = {"item_id": [item_ids(served)[0]], "k": 3}
    before = rest.predict(SIMILAR, probe)["item_ids"]
    answers = []

    _add_version(model_dir, "1", "2")

    def upgraded():
        answers.append(rest.predict(SIMILAR, probe)["item_ids"])  # the old version answers meanwhile
        return {"version": "2", "state": "AVAILABLE"}.items() <= rest.status(SIMILAR)[0].items()

    wait_for(upgraded, 120, "version 2 to load")
    assert answers and all((a == before).all() for a in answers)
    np.testing.assert_array_equal(rest.predict(SIMILAR, probe, version=2)["item_ids"], before)
    np.testing.assert_array_equal(grpc_client.predict(SIMILAR, probe, version=2)["item_ids"], before)
    assert [(s["version"], s["state"]) for s in rest.status(SIMILAR)] == [("2", "AVAILABLE"), ("1", "END")]
    with pytest.raises(ServingClientError, match="serves version 2") as caught:
        rest.predict(SIMILAR, probe, version=1)
    assert caught.value.code == 404

    # A broken version is reported and the version in service keeps answering.
    staging = model_dir / ".staging-3"
    shutil.copytree(model_dir / "2", staging)
    (staging / "saved_model.pb").write_bytes(b"not a SavedModel")
    os.rename(staging, model_dir / "3")
    failed = wait_for(lambda: [s for s in rest.status(SIMILAR) if s["version"] == "3" and s["state"] == "END"],
                      60, "version 3 to fail")
    assert failed[0]["status"]["error_code"] != "OK" and failed[0]["status"]["error_message"]
    np.testing.assert_array_equal(rest.predict(SIMILAR, probe)["item_ids"], before)
    assert server.registry.get(SIMILAR).version == 2

    # A model folder that appears later is served too.
    new_model = served / "tfrec_similar_copy"
    new_model.mkdir()
    shutil.copytree(model_dir / "1", new_model / ".staging-1")
    os.rename(new_model / ".staging-1", new_model / "1")
    wait_for(lambda: "tfrec_similar_copy" in server.registry.serving(), 60, "the new model to load")
    np.testing.assert_array_equal(rest.predict("tfrec_similar_copy", probe)["item_ids"], before)


def test_a_bounded_load_over_loopback_has_no_errors(server, requests_rows, capsys):
    clients, seconds, max_per_client = 8, 5.0, 400
    expected = RestClient(server.rest_url).predict(RETRIEVE, {"history": requests_rows, "k": 10})["item_ids"]

    def client(index: int) -> tuple[list[float], list[str]]:
        latencies, errors = [], []
        with RestClient(server.rest_url, timeout=30) as rest_client:
            deadline = time.monotonic() + seconds
            for i in range(max_per_client):
                if time.monotonic() >= deadline:
                    break
                row = (index + i) % len(requests_rows)
                start = time.perf_counter()
                try:
                    ids = rest_client.predict(RETRIEVE, {"history": [requests_rows[row]], "k": 10})["item_ids"]
                    if ids.tolist() != [expected[row].tolist()]:
                        errors.append(f"wrong answer for row {row}")
                except ServingClientError as e:
                    errors.append(str(e))
                latencies.append(time.perf_counter() - start)
        return latencies, errors

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(client, range(clients)))
    elapsed = time.perf_counter() - started
    latencies = np.array([x for lat, _ in results for x in lat]) * 1000
    errors = [e for _, errs in results for e in errs]
    with capsys.disabled():
        print(f"\nload: {clients} REST clients, {len(latencies)} requests in {elapsed:.1f}s "
              f"({len(latencies) / elapsed:.0f}/s), p50 {np.percentile(latencies, 50):.1f} ms, "
              f"p99 {np.percentile(latencies, 99):.1f} ms, errors {len(errors)}")
    assert errors == []
    assert len(latencies) >= clients  # every client got answers
    assert elapsed < seconds + 60


def test_tfrec_serve_prints_what_it_serves_and_stops_cleanly_on_ctrl_c(served, known_id, tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    shutil.copytree(served / SIMILAR / "1", export / SIMILAR / "1")
    with ServerProcess(export, poll_seconds=0.5) as process:
        text = process.wait_until_serving(SIMILAR, timeout=120).output()
        assert f"{SIMILAR:<22} version 1" in text
        assert f"{process.rest_url}/v1/models/<name>:predict" in text and process.grpc_target in text
        with RestClient(process.rest_url) as client:
            assert client.predict(SIMILAR, {"item_id": [known_id], "k": 1})["item_ids"].shape == (1, 1)
        with GrpcClient(process.grpc_target) as client:
            assert client.status(SIMILAR)[0]["state"] == "AVAILABLE"
        code = process.stop()
        assert code == 0, process.output()[-3000:]
    with pytest.raises(ServingClientError) as caught:
        RestClient(process.rest_url, timeout=5).status(SIMILAR)
    assert caught.value.code == "UNAVAILABLE"
