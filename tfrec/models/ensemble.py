"""Ensemble vectors: the members' unit vectors side by side.

A tower with ``members > 1`` returns its members' unit vectors concatenated and scaled by
``1 / sqrt(members)``. The dot product of two such vectors is then the mean of the members'
cosines, so an index, an export or a server takes an ensemble as it takes one model.

>>> a = [tf.constant([[1.0, 0.0]]), tf.constant([[0.0, 1.0]])]
>>> round(float(tf.reduce_sum(join_members(a) * join_members(a))), 6)  # mean of two cosines of 1
1.0
>>> [v.numpy().round(6).tolist() for v in split_members(join_members(a), 2)]
[[[1.0, 0.0]], [[0.0, 1.0]]]
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def each_member(members: int, make):
    """``[make(suffix) for each member]``: the suffix names member k's layers (``""``, ``"_1"``, ...)."""
    return [make(f"_{k}" if k else "") for k in range(members)]


def join_members(vectors: list) -> tf.Tensor:
    """The members' unit vectors ``[..., d]`` -> one ensemble vector ``[..., members * d]``."""
    if len(vectors) == 1:
        return vectors[0]
    return tf.concat(vectors, -1) / np.sqrt(len(vectors)).astype("float32")


def split_members(vector, members: int) -> list:
    """An ensemble vector ``[..., members * d]`` -> the members' vectors ``[..., d]``, unscaled."""
    if members == 1:
        return [vector]
    return tf.split(vector * np.sqrt(members).astype("float32"), members, axis=-1)
