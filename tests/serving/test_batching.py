"""Server-side batching in ``tfrec serve``, through real REST and gRPC requests on 127.0.0.1,
and the ``batching_parameters.txt`` that ``tfrec export`` writes for TF Serving.

The server merges at most ``ROWS`` examples per call, waits long for a batch to fill and runs
one batch at a time, so that the requests each test sends together fill exactly one batch:
the batch runs as soon as it is full, and what is merged is known. Answers are checked
against the same signature called alone in this process.
"""

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2

from serving.client import GrpcClient, RestClient, ServingClientError
from serving.export import RETRIEVE, RETRIEVE_SCANN, batching_parameters
from serving.server import ANY_PORT, ModelServer
from serving.server.batching import Batcher
from serving.server.status import DEADLINE_EXCEEDED, ServingError
from tfrec.app.cli import build_parser
from tfrec.config import BatchingConfig, ServeConfig
from tfrec.layout import BATCHING_PARAMETERS_FILE

ROWS = 8
LIMITS = ServeConfig(batching=BatchingConfig(max_batch_size=ROWS, batch_timeout_micros=20_000_000,
                                             num_batch_threads=1, max_enqueued_batches=1))


def item_ids(export) -> list[str]:
    lines = (export / "items.tsv").read_text(encoding="utf-8").splitlines()[1:]
    return [line.split("\t")[0] for line in lines]


def wait_for(condition, what: str, timeout: float = 120.0) -> None:
    event = threading.Event()
    for _ in range(int(timeout / 0.05)):
        if condition():
            return
        event.wait(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def server(export_dir):
    with ModelServer(export_dir, port=ANY_PORT, grpc_port=ANY_PORT, limits=LIMITS, page=False,
                     log=lambda _: None) as running:
        yield running


@pytest.fixture(scope="module")
def ids(export_dir) -> list[str]:
    return item_ids(export_dir)


def mixed_requests(ids: list[str], count: int, seed: int = 3) -> list[dict]:
    """One history each, of 1 to 10 ids (so of different lengths), some with their own ``k``."""
    rng = np.random.default_rng(seed)
    requests_ = []
    for i in range(count):
        inputs = {"history": [list(rng.choice(ids, size=int(rng.integers(1, 11)), replace=False))]}
        if i % 3:
            inputs["k"] = int(rng.integers(1, 15))
        requests_.append(inputs)
    return requests_


def send(server, model: str, inputs: dict, protocol: str) -> dict | ServingClientError:
    """One request on its own connection; the error it gets, if any."""
    client = RestClient(server.rest_url, timeout=120) if protocol == "rest" else GrpcClient(server.grpc_target,
                                                                                           timeout=120)
    with client:
        try:
            return client.predict(model, inputs)
        except ServingClientError as e:
            return e


def send_together(server, model: str, sent: list[tuple[dict, str]]) -> list:
    with ThreadPoolExecutor(len(sent)) as pool:
        return list(pool.map(lambda item: send(server, model, *item), sent))


def alone(server, model: str, inputs: dict) -> dict[str, np.ndarray]:
    """What the signature answers for ``inputs`` called alone, strings decoded as the clients decode them."""
    _, signature = server.service.resolve(model, None, None)
    arrays = {"history": np.array([[i.encode() for i in inputs["history"][0]]], dtype=object)}
    if "k" in inputs:
        arrays["k"] = np.array(inputs["k"], np.int32)
    outputs = signature.run(arrays)
    return {name: (np.char.decode(value.astype(bytes), "utf-8") if value.dtype == object else value)
            for name, value in outputs.items()}


def assert_same_answer(got: dict, expected: dict) -> None:
    """Ids exactly; scores to float32 rounding (a merged call multiplies matrices of another shape)."""
    assert set(got) == set(expected)
    for name in ("item_ids", "because_ids"):
        np.testing.assert_array_equal(got[name], expected[name])
    for name in ("scores", "because_scores"):
        assert got[name].shape == expected[name].shape
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model", [RETRIEVE, RETRIEVE_SCANN])
def test_concurrent_requests_are_merged_and_each_gets_its_own_answer(server, ids, model):
    requests_ = mixed_requests(ids, ROWS)
    merged_before = server.service.batcher.merged
    answers = send_together(server, model, [(inputs, "rest" if i % 2 else "grpc") for i, inputs in
                                            enumerate(requests_)])
    assert server.service.batcher.merged >= merged_before + ROWS  # one call answered all of them
    for inputs, answer in zip(requests_, answers):
        assert not isinstance(answer, ServingClientError), answer
        expected = alone(server, model, inputs)
        assert answer["item_ids"].shape == (1, inputs.get("k", expected["item_ids"].shape[1]))
        assert_same_answer(answer, expected)


def test_a_bad_request_in_a_batch_fails_alone_over_rest_and_grpc(server, ids):
    good = mixed_requests(ids, ROWS - 1, seed=5)  # with the k above index.k: one full batch (k 0 runs alone)
    # k 0 and a k above the catalogue's ScaNN index are the model's own errors
    bad = [({"history": [ids[:3]], "k": 0}, "rest"), ({"history": [ids[3:5]], "k": 10_000}, "grpc")]
    refused_before_the_queue = ({"history": [[1, 2]]}, "rest")  # numbers for ids: refused alone, never queued
    sent = [*[(inputs, "rest" if i % 2 else "grpc") for i, inputs in enumerate(good)], *bad,
            refused_before_the_queue]
    answers = send_together(server, RETRIEVE_SCANN, sent)
    for inputs, answer in zip(good, answers):
        assert not isinstance(answer, ServingClientError), answer
        assert_same_answer(answer, alone(server, RETRIEVE_SCANN, inputs))
    rest_bad, grpc_bad, refused = answers[len(good):]
    assert isinstance(rest_bad, ServingClientError) and rest_bad.code == 400 and "k must be" in rest_bad.message
    assert isinstance(grpc_bad, ServingClientError) and grpc_bad.code == "INVALID_ARGUMENT"
    assert "index.k" in grpc_bad.message
    assert isinstance(refused, ServingClientError) and refused.code == 400 and "history" in refused.message


def test_a_full_queue_answers_503_and_the_queued_requests_still_run(server, ids):
    batcher = server.service.batcher
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(send, server, RETRIEVE, {"history": [ids[:4]]}, "rest")
        wait_for(lambda: batcher.queued == 1, "the first request to wait for its batch")
        # ROWS more rows do not fit the waiting batch, and the queue holds one batch: 503 at once
        full = send(server, RETRIEVE, {"history": [ids[:3]] * ROWS}, "rest")
        assert isinstance(full, ServingClientError) and full.code == 503
        assert "max_enqueued_batches" in full.message
        rest_of_batch = pool.submit(send, server, RETRIEVE, {"history": [ids[:2]] * (ROWS - 1)}, "grpc")
        assert first.result()["item_ids"].shape[0] == 1
        assert rest_of_batch.result()["item_ids"].shape[0] == ROWS - 1
    assert batcher.queued == 0


def test_a_request_whose_deadline_passes_in_the_queue_leaves_it(server, ids):
    batcher = server.service.batcher
    with ThreadPoolExecutor(2) as pool:
        leader = pool.submit(send, server, RETRIEVE, {"history": [ids[:4]]}, "rest")
        wait_for(lambda: batcher.queued == 1, "the first request to wait for its batch")
        with GrpcClient(server.grpc_target, timeout=0.5) as hurried:
            with pytest.raises(ServingClientError) as late:
                hurried.predict(RETRIEVE, {"history": [ids[4:6]]})
        assert late.value.code == DEADLINE_EXCEEDED
        wait_for(lambda: batcher.queued == 1, "the late request to leave the queue")
        rest_of_batch = send(server, RETRIEVE, {"history": [ids[:2]] * (ROWS - 1)}, "rest")
        assert rest_of_batch["item_ids"].shape[0] == ROWS - 1
        assert leader.result()["item_ids"].shape[0] == 1


def test_the_batcher_refuses_a_request_past_its_deadline(server, ids):
    _, signature = server.service.resolve(RETRIEVE, None, None)
    batcher = Batcher(BatchingConfig(max_batch_size=4, batch_timeout_micros=20_000_000))
    history = np.array([[i.encode() for i in ids[:3]]], dtype=object)
    with pytest.raises(ServingError) as late:
        batcher.run(signature, {"history": history}, 1, deadline=0.0)
    assert late.value.code == DEADLINE_EXCEEDED and batcher.queued == 0


def test_batches_padded_to_an_allowed_size_answer_each_request_alone(server, ids):
    _, signature = server.service.resolve(RETRIEVE, None, None)
    batcher = Batcher(BatchingConfig(max_batch_size=8, allowed_batch_sizes=[4, 8], batch_timeout_micros=200_000))
    requests_ = mixed_requests(ids, 3, seed=11)

    def run(inputs: dict) -> dict:
        arrays = {"history": np.array([[i.encode() for i in inputs["history"][0]]], dtype=object)}
        if "k" in inputs:
            arrays["k"] = np.array(inputs["k"], np.int32)
        outputs = batcher.run(signature, arrays, 1)
        return {name: (np.char.decode(v.astype(bytes), "utf-8") if v.dtype == object else v)
                for name, v in outputs.items()}

    with ThreadPoolExecutor(len(requests_)) as pool:
        answers = list(pool.map(run, requests_))
    for inputs, answer in zip(requests_, answers):
        assert_same_answer(answer, alone(server, RETRIEVE, inputs))
    assert batcher.calls >= 1 and batcher.queued == 0


def test_many_concurrent_requests_all_get_their_answers_and_the_batcher_ends_idle(server, ids):
    _, signature = server.service.resolve(RETRIEVE, None, None)
    batcher = Batcher(BatchingConfig(max_batch_size=4, num_batch_threads=2, max_enqueued_batches=64))
    requests_ = mixed_requests(ids, 120, seed=13)

    def run(inputs: dict) -> np.ndarray:
        arrays = {"history": np.array([[i.encode() for i in inputs["history"][0]]], dtype=object)}
        if "k" in inputs:
            arrays["k"] = np.array(inputs["k"], np.int32)
        return batcher.run(signature, arrays, 1)["item_ids"], signature.run(arrays)["item_ids"]

    with ThreadPoolExecutor(24) as pool:
        for batched, alone_ in pool.map(run, requests_):
            np.testing.assert_array_equal(batched, alone_)
    assert batcher.merged > 0
    assert batcher.running == 0 and batcher.queued == 0  # every lead was given back


def test_batching_can_be_turned_off(server, ids):
    from serving.server import Service

    off = Service(server.export_dir, ServeConfig(batching=BatchingConfig(enabled=False)))
    assert off.batcher is None
    _, signature = server.service.resolve(RETRIEVE, None, None)
    arrays = {"history": np.array([[i.encode() for i in ids[:3]]], dtype=object)}
    np.testing.assert_array_equal(off.predict(signature, arrays, 1)["item_ids"], signature.run(arrays)["item_ids"])


def test_tfrec_serve_flags_set_the_batching_settings():
    from tfrec.app.cli import serve_settings_of

    parser = build_parser()
    settings = serve_settings_of(parser.parse_args(["serve", "--export", "e", "--no-batching"]))
    assert settings.batching.enabled is False
    settings = serve_settings_of(parser.parse_args(
        ["serve", "--export", "e", "--max-batch-size", "16", "--batch-timeout-micros", "500",
         "--num-batch-threads", "3", "--max-enqueued-batches", "4", "--allowed-batch-sizes", "4,8,16"]))
    assert settings.batching == BatchingConfig(max_batch_size=16, batch_timeout_micros=500, num_batch_threads=3,
                                               max_enqueued_batches=4, allowed_batch_sizes=[4, 8, 16])
    assert serve_settings_of(parser.parse_args(["serve", "--export", "e"])).batching == BatchingConfig()


# ------------------------------------------------------------------ batching_parameters.txt


def batching_parameters_class():
    """TF Serving's ``BatchingParameters`` (``tensorflow_serving/servables/tensorflow/
    session_bundle_config.proto``), built from its field names, numbers and types:
    ``tensorflow-serving-api`` does not ship it."""
    pool = descriptor_pool.DescriptorPool()
    pool.Add(descriptor_pb2.FileDescriptorProto.FromString(wrappers_pb2.DESCRIPTOR.serialized_pb))
    file = descriptor_pb2.FileDescriptorProto(name="tensorflow_serving/servables/tensorflow/batching_test.proto",
                                              package="tensorflow.serving", syntax="proto3",
                                              dependency=["google/protobuf/wrappers.proto"])
    message = file.message_type.add(name="BatchingParameters")
    field = descriptor_pb2.FieldDescriptorProto
    for number, name, wrapper in [(1, "max_batch_size", "Int64Value"), (2, "batch_timeout_micros", "Int64Value"),
                                  (3, "max_enqueued_batches", "Int64Value"), (4, "num_batch_threads", "Int64Value"),
                                  (5, "thread_pool_name", "StringValue")]:
        message.field.add(name=name, number=number, type=field.TYPE_MESSAGE, label=field.LABEL_OPTIONAL,
                          type_name=f".google.protobuf.{wrapper}")
    message.field.add(name="allowed_batch_sizes", number=6, type=field.TYPE_INT64, label=field.LABEL_REPEATED)
    message.field.add(name="pad_variable_length_inputs", number=7, type=field.TYPE_BOOL, label=field.LABEL_OPTIONAL)
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


def parse_batching_parameters(text: str):
    return text_format.Parse(text, batching_parameters_class()())


def test_batching_parameters_parse_as_tf_servings_message():
    settings = BatchingConfig(max_batch_size=24, batch_timeout_micros=700, num_batch_threads=3,
                              max_enqueued_batches=9, allowed_batch_sizes=[8, 16, 24])
    parsed = parse_batching_parameters(batching_parameters(settings))
    assert parsed.max_batch_size.value == 24 and parsed.batch_timeout_micros.value == 700
    assert parsed.num_batch_threads.value == 3 and parsed.max_enqueued_batches.value == 9
    assert list(parsed.allowed_batch_sizes) == [8, 16, 24]
    assert parsed.pad_variable_length_inputs is False
    with pytest.raises(text_format.ParseError):  # the parser does check: a bare number is no Int64Value
        parse_batching_parameters("max_batch_size: 32")


def test_the_export_writes_the_batching_parameters_of_its_config(tiny, export_dir):
    parsed = parse_batching_parameters((export_dir / BATCHING_PARAMETERS_FILE).read_text(encoding="utf-8"))
    settings = tiny.serve.batching
    assert parsed.max_batch_size.value == settings.max_batch_size
    assert parsed.batch_timeout_micros.value == settings.batch_timeout_micros
    assert parsed.num_batch_threads.value == settings.num_batch_threads
    assert parsed.max_enqueued_batches.value == settings.max_enqueued_batches
    assert list(parsed.allowed_batch_sizes) == settings.allowed_batch_sizes
