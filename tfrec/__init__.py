"""tfrec: two-tower retrieval for shops, from raw logs to a served endpoint.

Model code uses Keras 3 (``import keras``) only. Importing tfrec changes nothing in the
process's environment: TensorFlow's own Keras attribute stays whatever the user's
process makes it.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "app", "config", "data", "errors", "evaluation", "features", "fileio", "layout", "models",
           "tasks", "topk", "training"]
"""The version and the public subpackages and modules (``from tfrec import *`` imports them)."""
