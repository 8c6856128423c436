"""Device and dtype: resolved once, and everything is made there."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["resolve_device", "resolve_dtype", "as_tensor"]

_DTYPES = {
    "float64": torch.float64,
    "float32": torch.float32,
    "double": torch.float64,
    "float": torch.float32,
}


def resolve_device(device: Any = None) -> torch.device:
    """A ``torch.device`` from ``None`` (CPU), a name or a device.

    Raises
    ------
    ValueError
        For an unknown name, or ``"cuda"`` on a machine without CUDA.
    """
    if device is None:
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(
            f"device must be 'cpu', 'cuda', 'cuda:N' or a torch.device; got {device!r}."
        ) from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} asks for CUDA, but torch sees no CUDA device "
            "here; use device='cpu'."
        )
    return resolved


def resolve_dtype(dtype: Any = None) -> torch.dtype:
    """``torch.float64`` (default) or ``torch.float32`` from a name or dtype."""
    if dtype is None:
        return torch.float64
    if isinstance(dtype, torch.dtype) and dtype in (torch.float32, torch.float64):
        return dtype
    key = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if key not in _DTYPES:
        raise ValueError(f"dtype must be float64 or float32; got {dtype!r}.")
    return _DTYPES[key]


def as_tensor(array: Any, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``array`` as a tensor on ``device`` with ``dtype`` (no copy if it is one)."""
    return torch.as_tensor(
        np.asarray(array) if not torch.is_tensor(array) else array,
        dtype=dtype,
        device=device,
    )
