"""``jit-embedding serve``: the C++ engine and HTTP server, hosted by Python.

The server is the same one ``jit-embedding-server`` runs: HTTP, frame decoding, batching and
response encoding all happen in C++ threads that never hold the GIL. Encoders come from the same
YAML config (docs/serving.md). On top of the standalone binary, an encoder entry may name a Python
factory instead of an exported artifact::

    encoders:
      - name: tiny
        factory: mypkg.encoders:make_tiny      # module:function
        options: {width: 16}                  # keyword arguments for the factory
        max_batch_size: 32

The factory returns ``(module, spec)``: an ``nn.Module`` and its spec, a dict with ``inputs`` and
``outputs`` lists in the manifest's format (docs/export.md: name, dtype, shape with -1 for dynamic
dims, optional seq_dim and pad_value). The module takes the inputs positionally in spec order and
returns a tensor, a tuple/list in spec order, or a dict keyed by output name. Only its forward call
takes the GIL.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import signal
import threading
from collections.abc import Sequence
from typing import Any

import torch

from jit_embedding import _C, codec

# The wire's dtype names (one table, in jit_embedding.codec).
_TORCH_DTYPES = codec.DTYPES
_DTYPE_NAMES = {v: k for k, v in _TORCH_DTYPES.items()}


class ModuleRunner:
    """Runs an ``nn.Module`` on the batches the C++ engine forms (the PyExecutor contract).

    Args:
        module: the encoder; called positionally with the inputs in spec order.
        spec: ``{"inputs": [...], "outputs": [...]}`` as in manifest.json.
        device: where the module runs ("cpu", "cuda", "cuda:1"); inputs are moved there.
        intra_op_threads: CPU threads inside one forward, set once per engine thread (0 = torch's default).

    Called with ``[(name, dtype, shape, memoryview)]`` (memoryviews valid during the call only), it
    returns ``[(dtype, shape, uint8 ndarray)]`` in spec order, owning its bytes.
    """

    def __init__(self, module: torch.nn.Module, spec: dict, device: str = "cpu", intra_op_threads: int = 0):
        self.module = module.eval()
        self.spec = spec
        self.device = torch.device(device)
        self.intra_op_threads = intra_op_threads
        self._outputs = [(o["name"], o["dtype"]) for o in spec["outputs"]]
        self._local = threading.local()

    def __call__(self, inputs: Sequence[tuple[str, str, list[int], memoryview]]) -> list[tuple[str, list[int], Any]]:
        if self.intra_op_threads and not getattr(self._local, "configured", False):
            # torch's OpenMP thread count is per calling thread: each engine thread gets its own.
            torch.set_num_threads(self.intra_op_threads)
            self._local.configured = True
        args = []
        spans = []
        for _name, dtype, shape, view in inputs:
            tdtype = _TORCH_DTYPES[dtype]
            if view.nbytes:
                t = torch.frombuffer(view, dtype=tdtype).reshape(shape)
                spans.append((t.data_ptr(), t.data_ptr() + view.nbytes))
            else:
                t = torch.empty(shape, dtype=tdtype)
            args.append(t if self.device.type == "cpu" else t.to(self.device))
        with torch.inference_mode():
            out = self.module(*args)
        return [self._export(name, dtype, t, spans) for (name, dtype), t in zip(self._outputs, self._order(out))]

    def _order(self, out: Any) -> list[torch.Tensor]:
        if isinstance(out, torch.Tensor):
            out = (out,)
        if isinstance(out, dict):
            missing = [n for n, _ in self._outputs if n not in out]
            if missing:
                raise KeyError(f"the module's output dict lacks {missing}")
            out = [out[n] for n, _ in self._outputs]
        if not isinstance(out, (tuple, list)) or len(out) != len(self._outputs):
            n = len(self._outputs)
            raise TypeError(f"the module must return {n} tensors (spec order), got {type(out).__name__}")
        return list(out)

    @staticmethod
    def _export(name: str, dtype: str, t: torch.Tensor, spans: list[tuple[int, int]]) -> tuple[str, list[int], Any]:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"output '{name}' is {type(t).__name__}, not a tensor")
        if _DTYPE_NAMES.get(t.dtype) != dtype:
            raise TypeError(f"output '{name}' is {t.dtype}, its spec says {dtype}")
        t = t.detach().to("cpu").contiguous()
        ptr = t.data_ptr()
        if any(lo <= ptr < hi for lo, hi in spans):
            t = t.clone()  # the input bytes are freed after this batch; the output must outlive them
        flat = t.reshape(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)
        return dtype, list(t.shape), flat.numpy()


def module_version(module: torch.nn.Module, factory: str, options: dict) -> str:
    """``sha256:`` over the module's state (names, dtypes, shapes, bytes), its class source, the
    factory name and its options: equal versions compute equal outputs (it is part of cache keys)."""
    h = hashlib.sha256()
    h.update(factory.encode())
    h.update(json.dumps(options, sort_keys=True, default=str).encode())
    try:
        h.update(inspect.getsource(type(module)).encode())
    except (OSError, TypeError):
        h.update(type(module).__qualname__.encode())
    for key, value in sorted(module.state_dict().items()):
        v = value.detach().to("cpu").contiguous()
        h.update(f"{key}:{v.dtype}:{tuple(v.shape)}".encode())
        h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return "sha256:" + h.hexdigest()


def _normalize_spec(module: torch.nn.Module, spec: dict, name: str) -> tuple[torch.nn.Module, dict]:
    """Accepts the export spec format (``dims``: a name for a dynamic dim, an int for a static one)
    as well as manifest shapes (-1 for dynamic), so one factory serves both ``export --module`` and
    ``serve``."""
    if (
        not isinstance(spec, dict)
        or not isinstance(spec.get("inputs"), list)
        or not isinstance(spec.get("outputs"), list)
    ):
        raise ValueError(f"encoder '{name}': the factory's spec must be a dict with 'inputs' and 'outputs' lists")
    out = {"inputs": [], "outputs": []}
    for kind in ("inputs", "outputs"):
        for t in spec[kind]:
            t = dict(t)
            if "shape" not in t and "dims" in t:
                t["shape"] = [-1 if isinstance(d, str) else int(d) for d in t["dims"]]
            if "shape" not in t:
                raise ValueError(f"encoder '{name}': spec {kind} entry {t.get('name')!r} needs 'shape' or 'dims'")
            if t.get("seq_dim") is not None and kind == "inputs":
                t.setdefault("pad_value", 0)
            out[kind].append({k: t[k] for k in ("name", "dtype", "shape", "seq_dim", "pad_value") if k in t})
    return module, out


def load_factory(entry: dict) -> tuple[ModuleRunner, dict, str]:
    """Builds a Python encoder from a config entry ({name, factory, options_json, device, intra_op_threads}).

    Returns (runner, spec, version). Raises ValueError naming the entry for a malformed factory
    string, an import failure or a factory that does not return (module, spec).
    """
    name, target = entry["name"], entry["factory"]
    mod_name, _, fn_name = target.partition(":")
    if not mod_name or not fn_name:
        raise ValueError(f"encoder '{name}': factory must be 'module:function', got '{target}'")
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"encoder '{name}': cannot import factory '{target}': {e}") from e
    options = json.loads(entry.get("options_json") or "{}")
    made = fn(**options)
    if not (isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], torch.nn.Module)):
        raise ValueError(f"encoder '{name}': factory '{target}' must return (nn.Module, spec)")
    module, spec = _normalize_spec(made[0], made[1], name)
    device = entry.get("device") or "cpu"
    module = module.to(device)
    runner = ModuleRunner(module, spec, device=device, intra_op_threads=int(entry.get("intra_op_threads") or 0))
    return runner, spec, module_version(module, target, options)


class Server:
    """The jit-embedding server, in this process.

    Args:
        config: path of the YAML config (docs/serving.md).
        host, port: override the config's ``server.host`` / ``server.port`` (port 0: a free one).
        allow_public: allow a host that is not a loopback address (``server.allow_public``).
        auth_token_file, admin_token_file: files holding the bearer tokens (``server.auth``;
            docs/security.md). Without them the config's, or ``$JIT_EMBEDDING_AUTH_TOKEN`` /
            ``$JIT_EMBEDDING_ADMIN_TOKEN``.
        tls_cert_file, tls_key_file: PEM certificate and key: serve HTTPS (``server.tls``).

    Raises:
        ValueError: the config is malformed (the message names the key), or a token file is
            unreadable or holds a token shorter than 16 characters.

    ``start()`` loads every encoder and serves; ``drain()`` stops admitting and finishes in-flight
    work; ``wait(timeout)`` returns once the server has stopped. Use it as a context manager to
    drain on exit.
    """

    def __init__(
        self,
        config: str,
        host: str | None = None,
        port: int | None = None,
        *,
        allow_public: bool = False,
        auth_token_file: str | None = None,
        admin_token_file: str | None = None,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
    ):
        self._app = _C.App(
            str(config),
            load_factory,
            host,
            port,
            allow_public,
            auth_token_file,
            admin_token_file,
            tls_cert_file,
            tls_key_file,
        )

    def start(self) -> int:
        """Loads the encoders and starts serving; returns the port. Raises ValueError or RuntimeError
        naming the encoder that failed to load."""
        return self._app.start()

    @property
    def port(self) -> int:
        return self._app.port

    def encoders(self) -> list[dict]:
        """What GET /v1/encoders lists: name, version, input/output specs and batching settings."""
        return json.loads(self._app.encoders_json())

    def drain(self) -> bool:
        """Stops admitting, finishes in-flight requests within the grace period; True if all did."""
        return self._app.drain()

    def wait(self, timeout: float | None = None) -> bool:
        """Waits for the server to stop (forever when timeout is None); True once it has."""
        while True:
            step = 0.2 if timeout is None else min(0.2, timeout)
            if self._app.wait(step):
                return True
            if timeout is not None:
                timeout -= step
                if timeout <= 0:
                    return False

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.drain()


def serve(
    config: str, host: str | None = None, port: int | None = None, port_file: str | None = None, **security: Any
) -> int:
    """Runs the server until SIGTERM, SIGINT or POST /v1/admin/drain, then drains and returns 0 (1
    if the grace period ran out). ``security``: Server's keyword arguments (allow_public, token and
    TLS files).

    The main thread waits in short GIL-free slices, so Python's signal handlers run promptly.
    """
    server = Server(config, host=host, port=port, **security)
    bound = server.start()
    if port_file:
        tmp = f"{port_file}.tmp"
        with open(tmp, "w") as f:
            f.write(f"{bound}\n")
        os.replace(tmp, port_file)
    print(f"jit-embedding serve: listening on port {bound}", flush=True)
    result = {}

    def on_signal(signum: int, _frame: object) -> None:
        # Drain on a helper thread: a handler must return for the main loop to keep waiting.
        if "thread" not in result:
            result["thread"] = threading.Thread(target=lambda: result.setdefault("ok", server.drain()), daemon=True)
            result["thread"].start()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    server.wait()
    if "thread" in result:
        result["thread"].join()
    return 0 if result.get("ok", True) else 1
