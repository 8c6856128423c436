"""Optional PyTorch backend: batched fitting and the sparse routers.

Imported only when asked for (``import moestat.torch``); the rest of
moestat never imports torch.
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
