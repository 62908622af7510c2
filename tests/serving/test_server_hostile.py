"""The model server under hostile and heavy requests, on 127.0.0.1, with small limits.

Every case answers 400 / INVALID_ARGUMENT (or drops the client) before anything of
the request's declared size is built, says which limit or input is at fault and which
setting raises it, and the server keeps answering normal requests. Also the places
where TF Serving 2.20 answers with a particular status code, and the version policy
when a version folder is deleted.
"""

import json
import shutil
import socket
import time

import numpy as np
import pytest
import requests
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import classification_pb2, get_model_metadata_pb2, predict_pb2, regression_pb2

from serving.client import GrpcClient, RestClient, ServingClientError
from serving.export import CANDIDATE, RETRIEVE, RETRIEVE_SCANN, SEARCH, SIMILAR
from serving.server import ANY_PORT, ModelServer
from tfrec.config import ServeConfig
from tfrec.errors import TfrecError

LIMITS = ServeConfig(max_batch=8, max_history=50, max_body_bytes=64 * 1024, max_connections=12,
                     request_timeout_seconds=1.5, idle_timeout_seconds=3.0)
SLOW_CLIENTS = 6  # fewer than max_connections: the others still get in


def item_ids(export) -> list[str]:
    lines = (export / "items.tsv").read_text(encoding="utf-8").splitlines()[1:]
    return [line.split("\t")[0] for line in lines]


@pytest.fixture(scope="module")
def served(export_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("hostile") / "export"
    shutil.copytree(export_dir, out)
    return out


@pytest.fixture(scope="module")
def server(served):
    with ModelServer(served, port=ANY_PORT, grpc_port=ANY_PORT, poll_seconds=0.2, limits=LIMITS,
                     log=lambda _: None) as running:
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
def ids(served) -> list[str]:
    return item_ids(served)


def post(server, model: str, body, verb: str = "predict") -> tuple[int, str]:
    data = body if isinstance(body, bytes) else json.dumps(body)
    answer = requests.post(f"{server.rest_url}/v1/models/{model}:{verb}", data=data, timeout=60)
    return answer.status_code, answer.json().get("error", "")


def raw_http(server, request: bytes, timeout: float = 30) -> bytes:
    """Sends ``request`` on a fresh connection and returns all the server sends before closing."""
    host, port = server.rest_url.rsplit("/", 1)[-1].split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as connection:
        connection.sendall(request)
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks) and b"Connection: close" not in b"".join(chunks):
                break
    return b"".join(chunks)


def assert_serving(rest, ids):
    answer = rest.predict(RETRIEVE, {"history": [ids[:3]], "k": 3})["item_ids"]
    assert answer.shape == (1, 3)


def declared_proto(dtype, dims, values) -> tensor_pb2.TensorProto:
    """A TensorProto declaring ``dims`` but carrying only ``values`` (make_ndarray would expand it)."""
    proto = tensor_pb2.TensorProto(dtype=dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims]))
    if dtype == types_pb2.DT_STRING:
        proto.string_val.extend(values)
    else:
        proto.float_val.extend(values)
    return proto


def grpc_predict(grpc_client, model: str, inputs: dict) -> ServingClientError:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    for name, proto in inputs.items():
        request.inputs[name].CopyFrom(proto)
    with pytest.raises(ServingClientError) as caught:
        grpc_client._call(grpc_client.predictions.Predict, request)
    return caught.value


# ------------------------------------------------------------------ 1, 2: sizes checked before anything is built


@pytest.mark.parametrize("model", [RETRIEVE, RETRIEVE_SCANN])
def test_a_history_over_max_history_is_refused_naming_the_setting(server, rest, ids, model):
    history = [(ids * 10)[: LIMITS.max_history + 1]]
    status, error = post(server, model, {"inputs": {"history": history}})
    assert status == 400
    assert f"holds histories of {LIMITS.max_history + 1} items" in error and "serve.max_history" in error, error
    assert rest.predict(model, {"history": [ids[: LIMITS.max_history]], "k": 2})["item_ids"].shape == (1, 2)


def test_a_tiny_grpc_request_declaring_millions_of_values_is_refused_before_it_is_expanded(grpc_client, rest, ids):
    error = grpc_predict(grpc_client, RETRIEVE, {"history": declared_proto(types_pb2.DT_STRING, [1, 4_000_000],
                                                                           [b"a"])})
    assert error.code == "INVALID_ARGUMENT" and "histories of 4,000,000 items" in error.message
    assert "serve.max_history" in error.message
    error = grpc_predict(grpc_client, RETRIEVE, {"history": declared_proto(types_pb2.DT_STRING, [1, 2], [b"a"]),
                                                 "exclude_ids": declared_proto(types_pb2.DT_STRING, [10**9], [b"a"])})
    assert error.code == "INVALID_ARGUMENT" and "'exclude_ids' holds 1,000,000,000 values" in error.message
    assert "serve.max_batch × serve.max_history" in error.message
    error = grpc_predict(grpc_client, RETRIEVE, {"history": declared_proto(types_pb2.DT_STRING, [-5, 2], [b"a"])})
    assert error.code == "INVALID_ARGUMENT" and "cannot be negative" in error.message
    assert_serving(rest, ids)


def test_every_form_of_a_tensor_proto_gets_the_same_answer_and_a_short_content_is_a_bad_request(grpc_client, ids):
    def item_ids(history: tensor_pb2.TensorProto, k: tensor_pb2.TensorProto) -> list:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = RETRIEVE
        request.inputs["history"].CopyFrom(history)
        request.inputs["k"].CopyFrom(k)
        response = grpc_client._call(grpc_client.predictions.Predict, request)
        return list(response.outputs["item_ids"].string_val)

    history = [i.encode() for i in ids[:3]]
    by_values = item_ids(declared_proto(types_pb2.DT_STRING, [1, 3], history),
                         tensor_pb2.TensorProto(dtype=types_pb2.DT_INT32, int_val=[4]))
    assert len(by_values) == 4
    k_as_bytes = tensor_pb2.TensorProto(dtype=types_pb2.DT_INT32, tensor_content=np.int32(4).tobytes())
    assert item_ids(declared_proto(types_pb2.DT_STRING, [1, 3], history), k_as_bytes) == by_values
    # fewer values than the shape declares: the last one fills the rest, as tf.make_ndarray reads it
    repeated = item_ids(declared_proto(types_pb2.DT_STRING, [1, 3], history[:1]), k_as_bytes)
    assert repeated == item_ids(declared_proto(types_pb2.DT_STRING, [1, 3], history[:1] * 3), k_as_bytes)
    short = tensor_pb2.TensorProto(dtype=types_pb2.DT_INT32, tensor_content=b"\x04\x00",
                                   tensor_shape=tensor_shape_pb2.TensorShapeProto())
    error = grpc_predict(grpc_client, RETRIEVE, {"history": declared_proto(types_pb2.DT_STRING, [1, 3], history),
                                                 "k": short})
    assert error.code == "INVALID_ARGUMENT" and "'k' is not a valid TensorProto" in error.message, error.message


def test_a_batch_over_max_batch_is_refused_over_rest_and_grpc(server, grpc_client, ids):
    rows = [ids[:2]] * (LIMITS.max_batch + 1)
    status, error = post(server, RETRIEVE, {"inputs": {"history": rows}})
    assert status == 400 and f"batch of {LIMITS.max_batch + 1}" in error and "serve.max_batch" in error
    with pytest.raises(ServingClientError, match="serve.max_batch") as caught:
        grpc_client.predict(RETRIEVE, {"history": rows})
    assert caught.value.code == "INVALID_ARGUMENT"


def test_a_body_over_max_body_bytes_is_refused_unread(server, rest, ids):
    body = json.dumps({"inputs": {"history": [["x" * 1000] * 40] * 2}}).encode()
    assert len(body) > LIMITS.max_body_bytes
    status, error = post(server, RETRIEVE, body)
    assert status == 400 and "serve.max_body_bytes" in error and f"{len(body):,} bytes" in error
    # Declared but never sent: the answer comes at once, without waiting for the body.
    answer = raw_http(server, b"POST /v1/models/tfrec_retrieve:predict HTTP/1.1\r\nHost: localhost\r\n"
                              b"Content-Length: 999999999\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400") and b"serve.max_body_bytes" in answer
    assert_serving(rest, ids)


# ------------------------------------------------------------------ 3: Content-Length


@pytest.mark.parametrize("length", [b"-1", b"abc", b"1e3", b"+5", b"5, 7"])
def test_a_negative_or_garbage_content_length_is_a_bad_request(server, rest, ids, length):
    answer = raw_http(server, b"POST /v1/models/tfrec_retrieve:predict HTTP/1.1\r\nHost: localhost\r\nContent-Length: "
                      + length + b"\r\n\r\n{}")
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert b"Content-Length must be one whole number of bytes" in answer
    assert_serving(rest, ids)


# ------------------------------------------------------------------ 4: slow and idle clients


def _drops(connection: socket.socket, timeout: float) -> bool:
    """Whether the server closes ``connection`` (read returns nothing, or a reset) within ``timeout``."""
    connection.settimeout(timeout)
    try:
        return connection.recv(1024) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_slow_clients_are_dropped_and_normal_requests_are_answered_while_they_hang(server, rest, ids):
    host, port = server.rest_url.rsplit("/", 1)[-1].split(":")
    trickling = [socket.create_connection((host, int(port)), timeout=10) for _ in range(SLOW_CLIENTS)]
    idle = socket.create_connection((host, int(port)), timeout=10)
    try:
        for connection in trickling:
            connection.sendall(b"POST /v1/models/tfrec_retrieve:predict HTTP/1.1\r\nHost: localhost\r\n")
        for _ in range(2):  # keep trickling while normal requests come and go
            assert_serving(rest, ids)
            for connection in trickling:
                connection.sendall(b"X")
            time.sleep(0.5)
        # Each sends a byte now and then, never a whole request: dropped after request_timeout_seconds.
        assert all(_drops(c, timeout=30) for c in trickling)
        assert _drops(idle, timeout=30)  # and an idle keep-alive after idle_timeout_seconds
    finally:
        for connection in [*trickling, idle]:
            connection.close()
    assert_serving(rest, ids)


def test_connections_over_max_connections_get_503_at_once(server, rest, ids):
    host, port = server.rest_url.rsplit("/", 1)[-1].split(":")
    rest.session.close()  # so that the count below is this test's alone
    held = []
    try:
        deadline = time.monotonic() + 30
        while server.open_connections < LIMITS.max_connections and time.monotonic() < deadline:
            held.append(socket.create_connection((host, int(port)), timeout=10))
            time.sleep(0.02)
        assert server.open_connections == LIMITS.max_connections
        answer = raw_http(server, b"GET /v1/models/tfrec_retrieve HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 503") and b"serve.max_connections" in answer
    finally:
        for connection in held:
            connection.close()
    deadline = time.monotonic() + 30
    while server.open_connections >= LIMITS.max_connections and time.monotonic() < deadline:
        time.sleep(0.05)
    assert_serving(rest, ids)


# ------------------------------------------------------------------ 5: JSON edge cases


def test_deeply_nested_json_is_a_bad_request(server, rest, ids):
    status, error = post(server, RETRIEVE, b'{"inputs": {"history": ' + b"[" * 30_000 + b"]" * 30_000 + b"}}")
    assert status == 400 and "nests JSON deeper" in error
    status, error = post(server, RETRIEVE, b'{"inputs": {"history": ' + b"[" * 70 + b'"a"' + b"]" * 70 + b"}}")
    assert status == 400 and "nests JSON deeper" in error
    assert_serving(rest, ids)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_bad_requests_over_rest_and_grpc(server, grpc_client, ids, constant):
    body = f'{{"inputs": {{"query": ["mug"], "history": [["{ids[0]}"]], "history_weight": {constant}}}}}'
    status, error = post(server, SEARCH, body.encode())
    assert status == 400 and f"{constant} is not a JSON number" in error
    with pytest.raises(ServingClientError, match="'history_weight' holds NaN or infinity") as caught:
        grpc_client.predict(SEARCH, {"query": ["mug"], "history_weight": np.float32(constant.replace("inity", ""))})
    assert caught.value.code == "INVALID_ARGUMENT"


# ------------------------------------------------------------------ 6: requests the models would answer wrongly


def test_similar_items_of_an_unknown_id_is_a_bad_request(server, rest, grpc_client, ids):
    status, error = post(server, SIMILAR, {"inputs": {"item_id": ["no-such-item"]}})
    assert status == 400 and "item_id[0] 'no-such-item' is not an item of tfrec_similar's catalogue" in error
    status, error = post(server, SIMILAR, {"inputs": {"item_id": [ids[0], "nope"]}})
    assert status == 400 and "item_id[1] 'nope'" in error
    with pytest.raises(ServingClientError, match="is not an item of") as caught:
        grpc_client.predict(SIMILAR, {"item_id": ["x" * 500]})
    assert caught.value.code == "INVALID_ARGUMENT"
    assert rest.predict(SIMILAR, {"item_id": ids[:2], "k": 2})["item_ids"].shape == (2, 2)


@pytest.mark.parametrize("model, inputs, words", [
    (SEARCH, {"query": ["mug", "lamp"], "history": [["A"]]}, "'query' 2, 'history' 1"),
    (CANDIDATE, {"text": ["mug", "lamp"], "item_id": ["A"]}, "'text' 2, 'item_id' 1"),
])
def test_inputs_with_different_batch_sizes_are_a_bad_request(server, rest, model, inputs, words):
    status, error = post(server, model, {"inputs": inputs})
    assert status == 400 and "inputs carry different batch sizes" in error and words in error, error
    # An optional per-example input left empty still means "none given".
    first = next(iter(inputs))
    assert len(rest.predict(model, {first: inputs[first]})) >= 1


def test_categories_and_category_on_a_catalogue_without_categorical_fields(tiny, server, grpc_client):
    assert not tiny.data.items.categorical_fields
    status, error = post(server, CANDIDATE, {"inputs": {"text": ["mug"], "categories": [["Kitchen"]]}})
    assert status == 400 and "input 'categories' was given" in error and "no categorical fields" in error
    # An InvalidArgument raised inside the SavedModel reaches a gRPC client as INVALID_ARGUMENT with its message.
    with pytest.raises(ServingClientError, match="this catalogue has no category field") as caught:
        grpc_client.predict(RETRIEVE, {"history": [["A"]], "category": "Mugs"})
    assert caught.value.code == "INVALID_ARGUMENT" and caught.value.message.startswith(f"{RETRIEVE}: ")



def test_k_above_the_index_k_is_a_bad_request_naming_index_k(tiny, server, grpc_client, ids):
    k = tiny.index.k + 1
    status, error = post(server, RETRIEVE_SCANN, {"inputs": {"history": [ids[:3]], "k": k}})
    assert status == 400 and error.startswith(f"{RETRIEVE_SCANN}: ") and "index.k" in error, error
    with pytest.raises(ServingClientError, match="index.k") as caught:
        grpc_client.predict(RETRIEVE_SCANN, {"history": [ids[:3]], "k": k})
    assert caught.value.code == "INVALID_ARGUMENT"

# ------------------------------------------------------------------ conformance with TF Serving 2.20


def test_classify_and_regress_get_tf_servings_status_codes(server, grpc_client):
    for verb, kind in (("classify", "classification"), ("regress", "regression")):
        status, error = post(server, RETRIEVE, {"examples": [{"x": 1}]}, verb=verb)
        assert status == 400 and f"Expected {kind} signature method_name to be tensorflow/serving/{verb}" in error
        status, _ = post(server, "no_such_model", {"examples": []}, verb=verb)
        assert status == 404
    for method, request in ((grpc_client.predictions.Classify, classification_pb2.ClassificationRequest()),
                            (grpc_client.predictions.Regress, regression_pb2.RegressionRequest())):
        request.model_spec.name = RETRIEVE
        with pytest.raises(ServingClientError, match="Expected .* signature method_name") as caught:
            grpc_client._call(method, request)
        assert caught.value.code == "INVALID_ARGUMENT"


def test_version_labels_are_unrecognized_as_in_tf_serving_without_labels(server, grpc_client, ids):
    answer = requests.post(f"{server.rest_url}/v1/models/{RETRIEVE}/labels/stable:predict",
                           json={"inputs": {"history": [ids[:2]]}}, timeout=30)
    assert answer.status_code == 400 and "Unrecognized servable version label: stable" in answer.json()["error"]
    assert requests.get(f"{server.rest_url}/v1/models/{RETRIEVE}/labels/canary", timeout=30).status_code == 400
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name, request.model_spec.version_label = RETRIEVE, "stable"
    with pytest.raises(ServingClientError, match="Unrecognized servable version label") as caught:
        grpc_client._call(grpc_client.predictions.GetModelMetadata, request)
    assert caught.value.code == "INVALID_ARGUMENT"


def test_model_metadata_must_name_a_field(grpc_client):
    for fields, words in (([], "must specify at least one metadata_field"), (["shape"], "shape is not supported")):
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=fields)
        request.model_spec.name = RETRIEVE
        with pytest.raises(ServingClientError, match=words) as caught:
            grpc_client._call(grpc_client.predictions.GetModelMetadata, request)
        assert caught.value.code == "INVALID_ARGUMENT"


def test_rest_routes_tf_serving_answers_with_400(server):
    assert requests.get(f"{server.rest_url}/v1/models", timeout=30).status_code == 400
    assert requests.get(f"{server.rest_url}/v1/other", timeout=30).status_code == 400
    assert requests.get(f"{server.rest_url}/v1/models/{RETRIEVE}/versions/x", timeout=30).status_code == 400


def test_a_deleted_version_falls_back_to_the_newest_remaining_one(served, ids, tmp_path):
    export = tmp_path / "export"
    for version in ("1", "2"):
        shutil.copytree(served / SIMILAR / "1", export / SIMILAR / version)
    with ModelServer(export, port=ANY_PORT, grpc_port=0, poll_seconds=0.1, log=lambda _: None) as running, \
            RestClient(running.rest_url) as client:
        assert running.registry.get(SIMILAR).version == 2
        shutil.rmtree(export / SIMILAR / "2")
        deadline = time.monotonic() + 60
        while running.registry.serving().get(SIMILAR, None) is None or running.registry.get(SIMILAR).version != 1:
            assert time.monotonic() < deadline, client.status(SIMILAR)
            time.sleep(0.1)
        assert [(s["version"], s["state"]) for s in client.status(SIMILAR)] == [("2", "END"), ("1", "AVAILABLE")]
        assert client.predict(SIMILAR, {"item_id": [ids[0]], "k": 2})["item_ids"].shape == (1, 2)


def test_serving_one_models_folder_or_one_version_fails_fast_naming_the_export_root(served):
    with pytest.raises(TfrecError, match=rf"is one model's folder .*pass the export root, {served}"):
        ModelServer(served / SIMILAR, port=ANY_PORT, grpc_port=0).start()
    with pytest.raises(TfrecError, match=rf"is one version of one model .*pass the export root, {served}"):
        ModelServer(served / SIMILAR / "1", port=ANY_PORT, grpc_port=0).start()
