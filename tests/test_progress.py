"""Progress bars stay silent in notebooks that cannot draw a widget."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import types

from tqdm.std import tqdm as text_bar

from moestat._progress import progress_bar


def test_outside_a_notebook_the_bar_is_tqdm_text_bar():
    with progress_bar(total=3, disable=True) as bar:
        assert type(bar) is text_bar


def test_a_kernel_without_ipywidgets_gets_the_text_bar_without_a_warning(
    monkeypatch,
):
    monkeypatch.setitem(sys.modules, "ipykernel.zmqshell", types.ModuleType("shell"))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "ipywidgets" else real_find_spec(name),
    )
    # filterwarnings = error: a TqdmWarning would fail the test.
    with progress_bar(total=3, disable=True) as bar:
        assert type(bar) is text_bar


def test_importing_moestat_imports_no_notebook_bar():
    code = "import sys, moestat.selection; print('tqdm.autonotebook' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "False"
