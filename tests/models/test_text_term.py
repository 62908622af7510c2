"""The text term: a fixed text part in both towers' vectors, weighted on the query side."""

import numpy as np
import pytest

from tests.layer_test_case import run_layer_test
from tfrec.data import EvalSplit
from tfrec.evaluation.ranking import model_scorer
from tfrec.models import ItemTower, ScratchTextEncoder, TwoTowerModel, UserTower
from tfrec.training.text_weight import fit_text_weight, weighted_scorers

NUM_ITEMS, TEXT_DIM, DIM, MEMBERS = 6, 5, 4, 2
TEXT = np.random.default_rng(0).normal(size=(NUM_ITEMS, TEXT_DIM)).astype("float32")
UNIT_TEXT = TEXT / np.linalg.norm(TEXT, axis=-1, keepdims=True)
HISTORY = np.array([[-1, 0, 3, 5], [1, 2, 4, 0]])


def _item_tower(text_part=True, text=TEXT):
    tower = ItemTower(len(text), DIM, TEXT_DIM, hidden_dim=8, members=MEMBERS, text_part=text_part,
                      seed=3, name="item_tower")
    tower.set_catalogue(text_vectors=text)
    return tower


def _user_tower(causal, text_dim=TEXT_DIM):
    tower = UserTower(max_history=4, embedding_dim=DIM, num_layers=1, num_heads=2, intermediate_dim=8,
                      dropout=0.0, recent_items=3, causal=causal, members=MEMBERS, text_dim=text_dim,
                      name="user_tower")
    tower.build()
    return tower


def test_item_tower_with_text_part_battery(tmp_path):
    out = run_layer_test(_item_tower(), np.array([[0, 5, -1]]), (1, 3, MEMBERS * DIM + TEXT_DIM), tmp_path,
                         lambda t: t.set_catalogue(text_vectors=TEXT))
    np.testing.assert_allclose(out[0, :2, MEMBERS * DIM:], UNIT_TEXT[[0, 5]], rtol=1e-5)
    np.testing.assert_array_equal(out[0, 2], 0.0)  # padding


@pytest.mark.parametrize("causal", [True, False])
def test_user_tower_with_text_part_battery(tmp_path, causal):
    vectors = _item_tower()(np.maximum(HISTORY, 0)).numpy() * (HISTORY >= 0)[..., None]

    def prepare(tower):
        if not tower.built:
            tower.build()
        tower.text_weight.assign(0.25)

    run_layer_test(_user_tower(causal), (vectors, HISTORY >= 0), (2, MEMBERS * DIM + TEXT_DIM), tmp_path, prepare)


@pytest.mark.parametrize("causal", [True, False])
def test_a_score_is_the_weighted_sum_of_the_two_similarities(causal):
    items = _item_tower()
    vectors = items(np.maximum(HISTORY, 0)).numpy() * (HISTORY >= 0)[..., None]
    catalogue = items(np.arange(NUM_ITEMS)).numpy()
    tower = _user_tower(causal)
    plain = tower(vectors, HISTORY >= 0).numpy()
    np.testing.assert_array_equal(plain[:, MEMBERS * DIM:], 0.0)  # w = 0: the two-tower score alone
    tower.text_weight.assign(0.3)
    query = tower(vectors, HISTORY >= 0).numpy()
    # The text query: the mean unit text vector of the last 3 (recent_items) known items.
    recent = [[0, 3, 5], [2, 4, 0]]
    text_query = np.stack([UNIT_TEXT[r].mean(0) for r in recent])
    text_query /= np.linalg.norm(text_query, axis=-1, keepdims=True)
    expected = 0.7 * plain[:, :MEMBERS * DIM] @ catalogue[:, :MEMBERS * DIM].T + 0.3 * text_query @ UNIT_TEXT.T
    np.testing.assert_allclose(query @ catalogue.T, expected, rtol=1e-5, atol=1e-6)
    # With a decay, the item a places from the most recent weighs decay ** a.
    tower.text_decay.assign(0.5)
    decayed = np.stack([(UNIT_TEXT[r] * np.array([0.25, 0.5, 1.0])[:, None]).sum(0) for r in recent])
    decayed /= np.linalg.norm(decayed, axis=-1, keepdims=True)
    expected = 0.7 * plain[:, :MEMBERS * DIM] @ catalogue[:, :MEMBERS * DIM].T + 0.3 * decayed @ UNIT_TEXT.T
    np.testing.assert_allclose(tower(vectors, HISTORY >= 0).numpy() @ catalogue.T, expected, rtol=1e-5, atol=1e-6)


def test_the_causal_text_query_at_each_position_is_the_decayed_sum_up_to_it():
    vectors = _item_tower()(np.maximum(HISTORY, 0)).numpy() * (HISTORY >= 0)[..., None]
    tower = _user_tower(causal=True)
    tower.text_weight.assign(1.0)
    tower.text_decay.assign(0.5)
    text = tower.sequence(vectors, HISTORY >= 0).numpy()[..., MEMBERS * DIM:]  # positions of the last 3
    for row, items in enumerate(HISTORY[:, -3:]):
        for p in range(3):
            seen = [(item, 0.5 ** (p - j)) for j, item in enumerate(items[:p + 1]) if item >= 0]
            expected = sum(UNIT_TEXT[item] * w for item, w in seen)
            np.testing.assert_allclose(text[row, p], expected / np.linalg.norm(expected), rtol=1e-5, atol=1e-6)


def test_a_model_saved_before_the_decay_loads_with_the_plain_mean():
    tower = _user_tower(causal=False)
    tower.load_own_variables({"0": np.float32(0.4)})
    assert float(tower.text_weight.numpy()) == pytest.approx(0.4)
    assert float(tower.text_decay.numpy()) == 1.0


def test_the_trained_part_does_not_depend_on_the_text_part():
    items, bare = _item_tower(), _item_tower(text_part=False)
    bare.set_weights(items.get_weights())
    np.testing.assert_allclose(items(np.arange(NUM_ITEMS))[:, :MEMBERS * DIM], bare(np.arange(NUM_ITEMS)), rtol=1e-6)
    assert items.trained_dim == bare.output_dim == MEMBERS * DIM


def test_a_trainable_text_encoder_has_no_fixed_text_part():
    encoder = ScratchTextEncoder(vocabulary_size=10, sequence_length=3, hidden_dim=8, num_layers=1,
                                 num_heads=2, intermediate_dim=16)
    with pytest.raises(ValueError, match="text_part"):
        ItemTower(NUM_ITEMS, DIM, 8, text_encoder=encoder, token_length=3, text_part=True)


def _split(num_users, num_items, seed=0):
    rng = np.random.default_rng(seed)
    histories = [rng.integers(0, num_items, rng.integers(1, 6)) for _ in range(num_users)]
    return EvalSplit(user_ids=np.arange(num_users).astype(str), histories=histories,
                     history_groups=[np.arange(len(h)) for h in histories],
                     targets=[rng.integers(0, num_items, 1) for _ in range(num_users)])


@pytest.mark.parametrize("causal", [True, False])
def test_the_text_weight_search_measures_what_the_model_at_each_weight_scores(causal):
    text = np.random.default_rng(1).normal(size=(30, TEXT_DIM)).astype("float32")  # 10 items or more: NDCG@10
    model = TwoTowerModel(_item_tower(text=text), _user_tower(causal))
    split, weights, decays = _split(40, len(text)), (0.0, 0.3, 0.6), (1.0, 0.5)
    vectors = model.item_vectors()
    batches = [split.histories[:16], split.histories[16:]]
    tower, expected = model.user_tower, {}
    for weight, decay in [(w, d) for w in weights for d in decays]:
        tower.text_weight.assign(weight)
        tower.text_decay.assign(decay)
        direct = model_scorer(model, vectors, repeat=False)
        expected[weight, decay] = [direct(batch) for batch in batches]
    shared = weighted_scorers(model, vectors, weights, decays)
    assert set(shared) == {(0.0, 1.0), (0.3, 1.0), (0.3, 0.5), (0.6, 1.0), (0.6, 0.5)}  # weight 0 once
    for b, batch in enumerate(batches):  # every pair scores a batch before the next batch comes
        for pair, score in shared.items():
            np.testing.assert_allclose(score(batch), expected[pair][b], rtol=1e-5, atol=1e-6)
    measured = fit_text_weight(model, split, "ndcg@10", batch_size=16, weights=weights, decays=decays)
    assert set(measured) == {"0/1", "0.3/1", "0.3/0.5", "0.6/1", "0.6/0.5"}
    best = max(shared, key=lambda p: (measured[f"{p[0]:g}/{p[1]:g}"], -p[0], p[1]))
    assert (float(tower.text_weight.numpy()), float(tower.text_decay.numpy())) == pytest.approx(best)
