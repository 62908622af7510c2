"""The shared layer battery on every model layer, and what each tower promises."""

import numpy as np
import pytest
import tensorflow as tf

from tests.layer_test_case import run_layer_test
from tfrec.models import ItemTower, RelativeBlock, RepeatTerm, ScratchTextEncoder, TwoTowerModel, UserTower

NUM_ITEMS, TEXT_DIM, DIM = 6, 5, 4
RNG = np.random.default_rng(0)
TEXT = RNG.normal(size=(NUM_ITEMS, TEXT_DIM)).astype("float32")
TOKENS = np.array([[3, 4, 0], [5, 0, 0], [6, 7, 8], [3, 0, 0], [9, 4, 0], [2, 0, 0]], "int32")


def _frozen_item_tower(**kwargs):
    return ItemTower(NUM_ITEMS, DIM, TEXT_DIM, hidden_dim=8, name="item_tower", **kwargs)


def _store_text(tower):
    tower.set_catalogue(text_vectors=TEXT)


def test_item_tower_battery(tmp_path):
    out = run_layer_test(_frozen_item_tower(), np.array([[0, 5, -1]]), (1, 3, DIM), tmp_path, _store_text)
    np.testing.assert_allclose(np.linalg.norm(out[0, :2], axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(out[0, 2], 0.0)  # padding


def test_item_tower_with_categorical_features_battery(tmp_path):
    codes = np.array([[1, 0], [2, 1], [0, 3], [1, 1], [2, 2], [0, 0]], "int32")
    tower = _frozen_item_tower(categorical_sizes=[3, 4])

    def prepare(t):
        t.set_catalogue(text_vectors=TEXT, categorical=codes)

    run_layer_test(tower, np.array([0, 1, 2]), (3, DIM), tmp_path, prepare)


def test_item_tower_with_trainable_text_encoder_battery(tmp_path):
    encoder = ScratchTextEncoder(vocabulary_size=10, sequence_length=3, hidden_dim=8, num_layers=1,
                                 num_heads=2, intermediate_dim=16, name="text_encoder")
    tower = ItemTower(NUM_ITEMS, DIM, 8, text_encoder=encoder, token_length=3, hidden_dim=8, name="item_tower")
    run_layer_test(tower, np.array([[1, 2], [3, -1]]), (2, 2, DIM), tmp_path,
                   lambda t: t.set_catalogue(tokens=TOKENS))


def test_cold_item_vector_comes_from_text_alone():
    """An item without a trained id vector (index -1) is embedded from its text, as a
    catalogue item whose id vector is still at its zero initialisation."""
    tower = _frozen_item_tower()
    _store_text(tower)
    known = tower(np.array([2]))
    new = tower.embed(tf.constant(TEXT[2:3]), tf.constant([-1]))
    np.testing.assert_allclose(new, known, rtol=1e-6)
    tower.id_embedding[0].embeddings.assign(np.ones((NUM_ITEMS, DIM), "float32"))
    assert not np.allclose(tower(np.array([2])), new)


def test_id_dropout_only_in_training():
    tower = _frozen_item_tower(id_dropout=0.9, seed=1)
    _store_text(tower)
    tower.id_embedding[0].embeddings.assign(RNG.normal(size=(NUM_ITEMS, DIM)).astype("float32"))
    ids = np.arange(NUM_ITEMS)
    np.testing.assert_allclose(tower(ids, training=False), tower(ids, training=False))
    assert not np.allclose(tower(ids, training=True), tower(ids, training=False))


def test_scratch_text_encoder_battery(tmp_path):
    encoder = ScratchTextEncoder(vocabulary_size=10, sequence_length=3, hidden_dim=8, num_layers=2,
                                 num_heads=2, intermediate_dim=16, name="scratch")
    out = run_layer_test(encoder, TOKENS, (NUM_ITEMS, 8), tmp_path)
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("pooling,recent,long_term", [("last", 3, True), ("attention", 5, True),
                                                       ("mean", None, False), ("last", 2, False)])
def test_user_tower_battery(tmp_path, pooling, recent, long_term):
    tower = UserTower(max_history=5, embedding_dim=DIM, num_layers=1, num_heads=2, intermediate_dim=8,
                      dropout=0.0, pooling=pooling, recent_items=recent, long_term=long_term,
                      name=f"user_tower_{pooling}_{recent}_{long_term}")
    vectors = RNG.normal(size=(3, 5, DIM)).astype("float32")
    mask = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], bool)
    out = run_layer_test(tower, (vectors, mask), (3, DIM), tmp_path)
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("positions", ["relative", "none"])
def test_user_tower_positions_battery(tmp_path, positions):
    tower = UserTower(max_history=5, embedding_dim=DIM, num_layers=2, num_heads=2, intermediate_dim=8,
                      dropout=0.0, causal=True, positions=positions, name=f"user_tower_{positions}")
    vectors = RNG.normal(size=(3, 5, DIM)).astype("float32")
    mask = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], bool)
    run_layer_test(tower, (vectors, mask), (3, DIM), tmp_path)


def test_relative_block_battery(tmp_path):
    mask = np.tril(np.ones((4, 4), bool))[None].repeat(2, 0)
    run_layer_test(RelativeBlock(8, 2, max_distance=3, dropout=0.0, name="relative"),
                   (RNG.normal(size=(2, 4, DIM)).astype("float32"), mask), (2, 4, DIM), tmp_path)


def test_relative_block_bias_depends_on_distance_only():
    """One bias per head and distance: shifting a sequence along the axis changes nothing."""
    block = RelativeBlock(8, 2, max_distance=3, dropout=0.0)
    x = RNG.normal(size=(1, 6, DIM)).astype("float32")
    causal = np.tril(np.ones((6, 6), bool))[None]
    unbiased = block(x, attention_mask=causal).numpy()
    block.distance_bias.assign(RNG.normal(size=(2, 5)).astype("float32"))
    assert not np.allclose(block(x, attention_mask=causal), unbiased)
    shifted = np.concatenate([RNG.normal(size=(1, 2, DIM)).astype("float32"), x[:, :4]], axis=1)
    only_after_two = causal & (np.arange(6)[None, None] >= 2)
    np.testing.assert_allclose(block(shifted, attention_mask=only_after_two)[:, 2:],
                               block(x, attention_mask=causal)[:, :4], atol=1e-5)


def test_relative_block_attends_where_its_bias_points():
    """A large bias at distance d makes query i read key i - d (clipped at the window's start)."""
    block = RelativeBlock(8, 1, max_distance=4, dropout=0.0)
    x = RNG.normal(size=(1, 5, DIM)).astype("float32")
    causal = np.tril(np.ones((5, 5), bool))[None]
    block(x, attention_mask=causal)
    weights = []
    block.attention_dropout.call = lambda w, training=None: weights.append(w) or w
    for d in (0, 2):
        bias = np.zeros((1, 7), "float32")
        bias[0, d + 3] = 50.0  # index i - j + max_distance - 1
        block.distance_bias.assign(bias)
        weights.clear()
        block(x, attention_mask=causal)
        read = np.argmax(weights[0].numpy()[0, 0], axis=-1)
        np.testing.assert_array_equal(read[d:], np.arange(5)[d:] - d)


def test_ensemble_towers_battery(tmp_path):
    items = _frozen_item_tower(members=3)
    out = run_layer_test(items, np.array([0, 5, 2]), (3, 3 * DIM), tmp_path, _store_text)
    # Each member's part is a unit vector scaled by 1/sqrt(3): the whole is a unit vector.
    np.testing.assert_allclose(np.linalg.norm(out.reshape(3, 3, DIM), axis=-1), 1 / np.sqrt(3), rtol=1e-5)
    users = UserTower(max_history=5, embedding_dim=DIM, num_layers=1, num_heads=2, intermediate_dim=8,
                      dropout=0.0, causal=True, positions="none", members=3, name="user_tower_members")
    history = RNG.normal(size=(2, 5, 3 * DIM)).astype("float32")
    run_layer_test(users, (history, np.ones((2, 5), bool)), (2, 3 * DIM), tmp_path)


@pytest.mark.parametrize("causal", [False, True])
def test_ensemble_members_are_independent(causal):
    """Member k of the user tower reads member k of the item vectors and nothing else."""
    users = UserTower(max_history=5, embedding_dim=DIM, num_layers=1, num_heads=2, intermediate_dim=8,
                      dropout=0.0, causal=causal, members=2)
    history = RNG.normal(size=(2, 5, 2 * DIM)).astype("float32")
    mask = np.array([[0, 1, 1, 1, 1], [1] * 5], bool)
    changed = history.copy()
    changed[..., DIM:] += 1.0
    before, after = users(history, mask).numpy(), users(changed, mask).numpy()
    np.testing.assert_allclose(before[:, :DIM], after[:, :DIM], atol=1e-6)
    assert not np.allclose(before[:, DIM:], after[:, DIM:])
    # The members are initialised apart: the same input gives different outputs.
    same = np.concatenate([history[..., :DIM]] * 2, axis=-1)
    out = users(same, mask).numpy()
    assert not np.allclose(out[:, :DIM], out[:, DIM:])
    np.testing.assert_allclose(np.linalg.norm(before.reshape(2, 2, DIM), axis=-1), 1 / np.sqrt(2), rtol=1e-5)


def test_user_tower_ignores_padded_positions():
    tower = UserTower(max_history=4, embedding_dim=DIM, num_layers=1, num_heads=2, intermediate_dim=8,
                      dropout=0.0, pooling="mean")
    vectors = RNG.normal(size=(1, 4, DIM)).astype("float32")
    mask = np.array([[0, 1, 1, 1]], bool)
    other = vectors.copy()
    other[0, 0] = 100.0  # a padded position's content must not matter
    np.testing.assert_allclose(tower(vectors, mask), tower(other, mask), rtol=1e-5, atol=1e-6)


def test_user_tower_reads_recent_items_and_the_whole_history():
    """The transformer sees only the recent items; the long-term mean sees every item."""
    vectors = RNG.normal(size=(1, 6, DIM)).astype("float32")
    mask = np.ones((1, 6), bool)
    older = vectors.copy()
    older[0, 0] += 1.0  # an item older than the recent window
    recent_only = UserTower(max_history=6, embedding_dim=DIM, num_layers=1, num_heads=2, intermediate_dim=8,
                            dropout=0.0, recent_items=3, long_term=False)
    np.testing.assert_allclose(recent_only(vectors, mask), recent_only(older, mask), rtol=1e-5, atol=1e-6)
    both = UserTower(max_history=6, embedding_dim=DIM, num_layers=1, num_heads=2, intermediate_dim=8,
                     dropout=0.0, recent_items=3, long_term=True)
    assert not np.allclose(both(vectors, mask), both(older, mask))


def test_repeat_term_battery(tmp_path):
    term = RepeatTerm(name="repeat_term")
    similarity = RNG.normal(size=(2, NUM_ITEMS)).astype("float32")
    history = np.array([[-1, 1, 3, 1], [2, 2, 2, 5]])

    def prepare(t):
        t.build()
        t.feature_weights.assign([0.5, 1.0, -0.25, 2.0])

    run_layer_test(term, (similarity, history), (2, NUM_ITEMS), tmp_path, prepare)


def test_repeat_term_matches_hand_computed_features():
    term = RepeatTerm(recency_scales=(2.0, 20.0))
    term.build()
    term.scale.assign(3.0)
    term.feature_weights.assign([1.0, 2.0, 4.0])
    similarity = np.zeros((1, NUM_ITEMS), "float32")
    similarity[0, 0] = 0.5
    history = np.array([[-1, 1, 3, 1, 4]])  # item 1: twice, last seen 1 item ago; 3: 2 ago; 4: latest
    scores = term(similarity, history).numpy()[0]

    def term_of(count, ago):
        return np.log1p(count) + 2 * np.exp(-ago / 2.0) + 4 * np.exp(-ago / 20.0)

    expected = np.array([3 * 0.5, term_of(2, 1), 0.0, term_of(1, 2), term_of(1, 0), 0.0])
    np.testing.assert_allclose(scores, expected, rtol=1e-5)


def test_repeat_term_on_candidates_equals_the_dense_scores():
    term = RepeatTerm()
    term.build()
    term.feature_weights.assign([0.5, 1.0, -0.25, 2.0])
    similarity = RNG.normal(size=(2, NUM_ITEMS)).astype("float32")
    history = np.array([[-1, 1, 3, 1], [2, 2, 2, 5]])
    candidates = np.array([[5, 1, 0], [2, 4, 5]])
    dense = term(similarity, history).numpy()
    sparse = term.candidate_scores(np.take_along_axis(similarity, candidates, 1), history, candidates).numpy()
    np.testing.assert_allclose(sparse, np.take_along_axis(dense, candidates, 1), rtol=1e-5)


def test_repeat_term_fit_learns_that_repeats_matter():
    """When held-out items are the history's items, fitting gives them positive weight."""
    rng = np.random.default_rng(3)
    users, n = 200, 30
    histories = rng.integers(0, n, size=(users, 6))
    targets = [np.array([h[-1]]) for h in histories]
    similarity = rng.normal(scale=0.1, size=(users, n)).astype("float32")
    term = RepeatTerm(initial_scale=1.0)
    before = float(term.fit(similarity, histories, targets, steps=1))
    after = float(term.fit(similarity, histories, targets, steps=200))
    assert after < before
    assert term.feature_weights.numpy()[1] > 0.5  # the most recent item weighs most


def _tiny_model():
    item = _frozen_item_tower()
    _store_text(item)
    user = UserTower(max_history=3, embedding_dim=DIM, num_layers=1, num_heads=2, intermediate_dim=8,
                     dropout=0.0, name="user_tower")
    model = TwoTowerModel(item, user, RepeatTerm(name="repeat_term"), name="two_tower")
    model.build()
    return model


def test_two_tower_model_saves_and_scores(tmp_path):
    model = _tiny_model()
    model.repeat_term.feature_weights.assign([1.0, 1.0, 0.0, 0.0])
    history = np.array([[-1, -1, 0, 2, 2], [1, 2, 3, 4, 5]])
    vectors = model.item_vectors()
    scores = model.scores(history, vectors).numpy()
    assert scores.shape == (2, NUM_ITEMS)
    path = tmp_path / "model.keras"
    model.save(path)
    import keras

    restored = keras.saving.load_model(path, compile=False)
    np.testing.assert_allclose(restored.scores(history, restored.item_vectors()), scores, rtol=1e-5)
    # Only the max_history most recent items reach the user tower.
    np.testing.assert_allclose(model.query_vectors(history[:, -3:]), model.query_vectors(history), rtol=1e-6)
    # Looking history items up in the catalogue's vectors equals running the item tower on them.
    np.testing.assert_allclose(model.query_vectors(history, vectors), model.query_vectors(history), atol=1e-6)
    # Without the repeat term, scores are the plain similarities.
    plain = model.scores(history, vectors, repeat=False).numpy()
    np.testing.assert_allclose(plain, model.query_vectors(history).numpy() @ vectors.numpy().T, rtol=1e-5,
                               atol=1e-6)


def test_a_model_file_whose_weights_do_not_fit_gets_a_clear_error(tmp_path):
    """A model file of another tower layout (here: its config claims two members, its weights
    are of one) is refused with a TfrecError naming the file, not a list of Keras layers."""
    import json
    import zipfile

    from tfrec.errors import TfrecError
    from tfrec.layout import MODEL_FILE
    from tfrec.models.two_tower import load_model

    _tiny_model().save(tmp_path / "one.keras")
    with zipfile.ZipFile(tmp_path / "one.keras") as source, \
            zipfile.ZipFile(tmp_path / MODEL_FILE, "w") as target:
        for entry in source.infolist():
            data = source.read(entry)
            if entry.filename == "config.json":
                text = json.dumps(json.loads(data))
                data = text.replace('"members": 1', '"members": 2').encode()
                assert data != text.encode()
            target.writestr(entry, data)
    with pytest.raises(TfrecError, match=MODEL_FILE):
        load_model(tmp_path)
