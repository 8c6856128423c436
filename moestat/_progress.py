"""Progress bars: tqdm's notebook bar where it can draw, the text bar elsewhere.

``tqdm.auto`` warns on import inside a Jupyter kernel without ipywidgets
(and then falls back to the text bar anyway). Choosing the bar here, when
one is made, keeps ``import moestat`` silent in every notebook.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any


def _in_notebook() -> bool:
    return "ipykernel.zmqshell" in sys.modules


def progress_bar(*args: Any, **kwargs: Any) -> Any:
    """A ``tqdm`` bar (same arguments): a widget in notebooks that can draw one."""
    if _in_notebook() and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.auto import tqdm
    else:
        from tqdm.std import tqdm
    return tqdm(*args, **kwargs)
