"""modelreg: load each model once and share it.

In one process::

    import modelreg
    h = modelreg.get_or_load("whisper-base", load_whisper)   # one load, any number of threads
    with h:                                                    # the lease ends with the block
        h.model.transcribe(audio)

``Registry`` gives TTL, byte budget and LRU eviction, metrics and listing;
``get_or_load`` uses one default registry. Each load runs its loader on a daemon
thread of its own (at most ``max_concurrent_loads`` at a time); callers wait
with the GIL released; an exception raised by a loader
is raised in every waiter as ``LoadError``, with the loader's traceback in its
message.

Across processes, ``connect("unix:PATH")`` returns a ``Client`` of a node
(``modelreg serve``): NumPy inputs in shared memory, outputs as ``Tensor``
objects read through DLPack (NumPy, PyTorch) or the array interface without a
copy. ``connect("tcp://HOST:PORT", tls_cert=..., tls_key=..., tls_ca=...)``
reaches a node on another host. See docs/python.md.
"""
import atexit as _atexit
import json as _json
import sys as _sys
import threading as _threading
import traceback as _traceback

from . import _modelreg
from ._modelreg import LoadError, ModelRegError, __version__

__all__ = ["Registry", "Handle", "get_or_load", "LoadError", "ModelRegError", "default_registry",
           "connect", "default_uri", "Client", "Stream", "Tensor"]

Tensor = _modelreg.Tensor


class Handle:
    """A lease on a loaded model: while it lives, the model is never evicted.

    Use ``handle.model``; release with ``release()``, a ``with`` block, or by
    dropping the last reference (from any thread).
    """

    __slots__ = ("_h",)

    def __init__(self, h):
        self._h = h

    @property
    def model(self):
        return self._h.model

    @property
    def key(self):
        return self._h.key

    @property
    def generation(self):
        return self._h.generation

    @property
    def memory_bytes(self):
        return self._h.memory_bytes

    @property
    def valid(self):
        return self._h.valid

    def release(self):
        """Gives the lease back now; False if it already was."""
        return self._h.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._h.release()
        return False

    def __repr__(self):
        return f"<modelreg.Handle {self.key!r} generation={self.generation} valid={self.valid}>"


class Registry:
    """A process-local model registry.

    ttl: unload a model idle (no handles) this many seconds (0: never).
    max_memory_bytes: byte budget for all models (LRU eviction; 0: none).
    max_models: most models at once (0: unlimited).
    A model's size is its ``nbytes`` attribute if it has one, else
    ``sys.getsizeof``.
    """

    def __init__(self, ttl=30.0, max_memory_bytes=0, max_models=0, max_concurrent_loads=2,
                 load_timeout=0.0):
        self._r = _modelreg.Registry(float(ttl), int(max_memory_bytes), int(max_models),
                                     int(max_concurrent_loads), float(load_timeout))

    def get_or_load(self, key, loader):
        """The model under ``key``, loading it with ``loader()`` if absent.

        Concurrent callers of one key share one call of ``loader``.
        """
        if not isinstance(key, str):
            raise TypeError(f"key must be a str, not {type(key).__name__}")
        if not callable(loader):
            raise TypeError("loader must be callable")
        return Handle(self._r.get_or_load(key, loader))

    def metrics(self):
        """Models, their counters and the totals, as a dict."""
        return _json.loads(self._r.metrics_json())

    def list(self):
        """The loaded models (dicts: key, state, handles, memory_bytes, ...)."""
        return self.metrics()["models"]

    def evict_expired(self):
        """Unloads every model idle for longer than the TTL: (count, freed_bytes)."""
        return self._r.evict_expired()

    def unload(self, key):
        """Unloads an idle model now: (count, freed_bytes); ModelRegError 'busy' if held."""
        return self._r.unload(key)

    def close(self):
        """Stops the registry (its models are dropped)."""
        self._r.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


_default = None
_default_lock = _threading.Lock()


def default_registry():
    """The registry ``get_or_load`` uses (created on first use)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Registry()
        return _default


def get_or_load(key, loader):
    """``default_registry().get_or_load(key, loader)``."""
    return default_registry().get_or_load(key, loader)


class Client(_modelreg.Client):
    """A client of a node (``modelreg serve``); see ``connect``.

    ``infer`` is the C++ method itself: a call from Python goes through no
    Python frame of this package (docs/python.md, "What a call costs").
    """

    def __init__(self, uri, tls_cert="", tls_key="", tls_ca=""):
        _modelreg.Client.__init__(self, uri, tls_cert or "", tls_key or "", tls_ca or "")
        self.uri = uri

    def stream(self, model, wait=0.0, timeout=None):
        """Opens a streaming session on catalog model ``model`` (loaded if it
        is not): the node pins one of the model's instances to it until it is
        finished, cancelled, left idle or this client goes away. Use it as a
        context manager::

            with client.stream("asr-en-us") as s:
                for chunk in chunks:              # e.g. 320 int16 samples (20 ms)
                    partial = s.push(chunk)       # {"text": Tensor}
                final = s.finish()                # {"text", "words", "word_times"}

        ``wait``: seconds to wait for a free instance before ``busy``.
        ``timeout``: seconds per call (default 300). Leaving the ``with``
        block unfinished cancels the session.
        """
        return Stream(self._open_session(model, float(wait or 0), float(timeout or 0)))

    def empty(self, shape, dtype):
        """A NumPy array in shared memory: input written into it is not copied."""
        if isinstance(shape, int):
            shape = (shape,)
        return self._empty([int(d) for d in shape], dtype)

    def load(self, name, timeout=None):
        """Loads catalog model ``name`` (held for this client); its memory bytes.
        ``timeout``: seconds (default 300), as for ``infer``."""
        return self._load(name, float(timeout or 0))

    def unload(self, name):
        """Unloads ``name`` now: (count, freed_bytes)."""
        return self._unload(name)

    def status(self):
        """The node's status: models, totals, connections, transport counters."""
        return _json.loads(self._status_json())

    def counters(self):
        """This connection's counters: zero-copy tensors, copied bytes, and
        this client's ``infer`` calls with the seconds they spent waiting for
        the node (``infer_calls``, ``infer_wait_s``)."""
        return self._counters()

    def close(self):
        """Gives back this client's leases and closes its connection."""
        self._close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class Stream:
    """A streaming session (``Client.stream``): ``push`` chunks, read the
    partial results, ``finish`` for the final one."""

    def __init__(self, s):
        self._s = s

    @property
    def id(self):
        """The session's number on the node."""
        return self._s.id

    @property
    def open(self):
        """False once finished or cancelled."""
        return self._s.open

    def push(self, chunk, timeout=None, *, as_numpy=False):
        """Sends one chunk (a NumPy array, sent as ``audio``, or a dict of
        arrays) and returns the partial result (dict of ``Tensor``; with
        ``as_numpy=True``, of read-only NumPy arrays, as ``Client.infer``)."""
        if not isinstance(chunk, dict):
            chunk = {"audio": chunk}
        return self._s.push(chunk, float(timeout or 0), bool(as_numpy))

    def finish(self, timeout=None, *, as_numpy=False):
        """Ends the input; returns the final result. The session is closed."""
        return self._s.finish(float(timeout or 0), bool(as_numpy))

    def cancel(self):
        """Drops the session without a result (nothing if it is closed)."""
        self._s.cancel()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._s.cancel()
        return False


def default_uri():
    """Where ``modelreg serve`` listens by default: ``unix:`` + $MODELREG_SOCKET,
    else $XDG_RUNTIME_DIR/modelreg/modelreg.sock, else /tmp/modelreg-UID/modelreg.sock."""
    return "unix:" + _modelreg.default_socket_path()


def connect(uri=None, *, tls_cert=None, tls_key=None, tls_ca=None):
    """Connects to a node and returns a ``Client``.

    ``uri``: ``"unix:PATH"`` (same host: tensors in shared memory, no copy) or
    ``"tcp://HOST:PORT"`` (another host: tensors travel in the messages);
    default ``default_uri()``. For a node serving TCP with mutual TLS, give
    ``tls_cert``, ``tls_key`` and ``tls_ca`` (PEM files); they are checked
    here. Raises ``ModelRegError`` (``unavailable``) when no node answers.
    """
    return Client(uri or default_uri(), tls_cert, tls_key, tls_ca)


def _run_loader(loader, done):
    # The body of a loader's thread: calls the loader, sizes its model and
    # reports once through `done` (model, bytes, type name, traceback or "").
    try:
        model = loader()
        size = int(model.nbytes) if hasattr(model, "nbytes") else _sys.getsizeof(model)
        if not 0 <= size < 2**64:
            raise ValueError(f"the model's nbytes is {size}, not a size in bytes")
        kind = type(model).__name__
    except BaseException:
        done(None, 0, "", _traceback.format_exc())
        return
    done(model, size, kind, "")


_modelreg._set_loader_runner(_run_loader)
_atexit.register(_modelreg._shutdown)
