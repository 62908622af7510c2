"""``tfrec serve``: a local model server that answers TF Serving's REST and gRPC APIs.

Stock TF Serving cannot load ``tfrec_retrieve_scann`` (ScaNN's ops are not linked in), and
not every machine has TF Serving. This server loads the same SavedModels from the same
folder layout (``EXPORT_DIR/<name>/<version>/``) and answers the same requests, so a
client written against TF Serving (``serving/client.py``, curl, tensorflow-serving-api)
works against either.

One module per role:

- ``checks``: request checks against a signature, and the limits a request must keep;
- ``registry``: the models of the export folder and the version in service (latest policy);
- ``codec``: TF Serving's JSON encoding of tensors (shared with ``serving/client.py``);
- ``service``: the protocol-neutral request path (version, model and signature, limits,
  status, metadata) both APIs answer through;
- ``rest`` and ``grpc_service``: the two APIs, each over the service; ``status``: their
  shared error codes; ``hosts``: the ``Host`` a REST request may name; ``page``: the page at ``GET /``;
- ``app``: ``ModelServer``, which binds the ports, runs the threads and polls for new
  versions; ``main``: the ``tfrec serve`` command.

The limits are the config's ``serve`` section (``tfrec.config.ServeConfig``).
"""

from serving.server.app import ANY_PORT, ModelServer
from serving.server.checks import Signature, TensorSpec
from serving.server.main import serve
from serving.server.registry import ModelRegistry, Servable, load_servable
from serving.server.service import Service
from serving.server.status import ServingError

__all__ = ["ANY_PORT", "ModelRegistry", "ModelServer", "Servable", "Service", "ServingError", "Signature",
           "TensorSpec", "load_servable", "serve"]
