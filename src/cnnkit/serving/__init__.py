"""``cnnkit serve``: an HTTP service and web page around one model (needs ``cnnkit[serve]``).

``create_app(predictor)`` builds the ASGI app, ``serve(path)`` runs it with uvicorn, and
``MicroBatcher`` is what lets concurrent requests share one forward pass.
"""

from __future__ import annotations

from cnnkit.serving.app import ServiceLimits, create_app, describe_model
from cnnkit.serving.batcher import BatchStatistics, MicroBatcher
from cnnkit.serving.server import ServerThread, load_service_predictor, serve, start_server_thread

__all__ = [
    "BatchStatistics",
    "MicroBatcher",
    "ServerThread",
    "ServiceLimits",
    "create_app",
    "describe_model",
    "load_service_predictor",
    "serve",
    "start_server_thread",
]
