"""jit-embedding on Ray Serve: replicas of the server managed, scaled and rolled by Serve.

    pip install "jit-embedding[ray]"
    jit-embedding ray deploy --config server.yaml --app embed --min-replicas 1 --max-replicas 8
    client = EmbeddingClient(discovery="ray://embed")     # or the printed http://.../embed URL

Modules (docs/ray.md tells the whole story):

    settings.py        RaySettings (every knob, validated) and each replica's server config
    deployment.py      EmbeddingServerReplica: the Serve deployment, one server process per replica
    server_process.py  the server child process: start, readiness, load, drain (no Ray import)
    autoscaling.py     queue_depth_policy: Serve's custom autoscaling policy over our metrics
    discovery.py       EndpointRegistry (the live endpoint list) and ray://<app> resolution
    app.py             deploy / update / status / shutdown from a driver
    cli.py             ``jit-embedding ray deploy|status|update|shutdown``

Only ``settings``, ``server_process`` and ``autoscaling`` import without Ray installed.
"""

from jit_embedding.ray.settings import RaySettings

__all__ = ["RaySettings"]
