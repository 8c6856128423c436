"""Optional PyTorch backend of the statistical models: batched fitting.

Imported only when asked for (``import moestat.torch``); the rest of
moestat never imports torch. The sparse routers of large models are
:mod:`moestat.routing`.
"""

from __future__ import annotations

try:
    import torch as _torch  # noqa: F401
except ImportError as error:  # pragma: no cover - exercised without torch only
    raise ImportError(
        "moestat.torch needs PyTorch. Install it with "
        "`pip install 'moestat[torch]'` (or `pip install torch`)."
    ) from error

__all__: list[str] = []
