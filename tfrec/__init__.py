"""tfrec: two-tower retrieval for shops, from raw logs to a served endpoint.

TensorFlow Recommenders is written against Keras 2 and refuses to import unless
``TF_USE_LEGACY_KERAS=1`` is set before TensorFlow is first imported. Every entry
point (the CLI, the Beam pipeline, the tests) imports this package first, so this
is the one place the variable is set. Model code uses Keras 3 (``import keras``)
only; with the variable set, TensorFlow's own Keras attribute is Keras 2, which
nothing here touches.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

__version__ = "0.1.0"
