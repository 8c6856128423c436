"""Every public name is documented, and the documentation site builds.

The API reference is generated from the public modules' ``__all__``
(``docs/api_pages.py``), so a name is in the reference exactly when it is
exported; these tests make sure that what the reference shows is a real
numpydoc docstring, and that the site builds without a single warning.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

pytest.importorskip("sphinx", reason="the docs extra is not installed")
pytest.importorskip("numpydoc", reason="the docs extra is not installed")
from numpydoc.docscrape import ClassDoc, FunctionDoc  # noqa: E402


def _api_pages():
    spec = importlib.util.spec_from_file_location("api_pages", DOCS / "api_pages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


api_pages = _api_pages()
MODULES = api_pages.public_modules()
HOMES = api_pages.home_modules(MODULES)
DOCUMENTED = [(module, name) for module, names in HOMES.items() for name in names]


def public_methods(cls: type) -> list[str]:
    """Methods and properties a class defines itself, without a leading _."""
    return [
        name
        for name, value in vars(cls).items()
        if not name.startswith("_")
        and (inspect.isfunction(value) or isinstance(value, property | classmethod))
    ]


def test_every_public_module_says_what_it_is():
    for name in MODULES:
        module = importlib.import_module(name)
        assert (module.__doc__ or "").strip(), f"{name} has no module docstring"


def test_every_exported_name_is_on_one_api_page():
    exported = set()
    for name in MODULES:
        module = importlib.import_module(name)
        exported |= {(id(getattr(module, attr)), attr) for attr in module.__all__}
    placed = {
        (id(getattr(importlib.import_module(module), attr)), attr)
        for module, attr in DOCUMENTED
    }
    assert exported == placed
    # The top level is grouped by hand; a name left out stops the build.
    page = api_pages.module_page("moestat", HOMES["moestat"])
    for name in HOMES["moestat"]:
        assert f"   {name}" in page


@pytest.mark.parametrize(
    ("module", "name"), DOCUMENTED, ids=[f"{m}.{n}" for m, n in DOCUMENTED]
)
def test_public_name_has_a_numpydoc_docstring(module, name):
    obj = getattr(importlib.import_module(module), name)
    if not (inspect.isclass(obj) or callable(obj)):
        doc = api_pages.constant_docs(module).get(name, "")
        assert doc, f"{module}.{name}: add a '#:' comment above its assignment"
        return
    doc = inspect.getdoc(obj) or ""
    assert doc.strip(), f"{module}.{name} has no docstring"
    # numpydoc parses it without complaint (a warning is an error here).
    parsed = (
        ClassDoc(obj, config={"show_class_members": False})
        if inspect.isclass(obj)
        else FunctionDoc(obj)
    )
    assert parsed["Summary"], f"{module}.{name} has no summary line"
    if inspect.isclass(obj):
        for method in public_methods(obj):
            member = inspect.getattr_static(obj, method)
            target = member.fget if isinstance(member, property) else member
            target = getattr(target, "__func__", target)
            assert (inspect.getdoc(target) or "").strip(), (
                f"{module}.{name}.{method} has no docstring"
            )


def _copy_sources(target: Path) -> Path:
    generated = shutil.ignore_patterns(
        "_build",
        "api",
        "auto_examples",
        "notebooks",
        "jupyter_execute",
        "sg_execution_times.rst",
        "__pycache__",
    )
    shutil.copytree(DOCS, target / "docs", ignore=generated)
    shutil.copytree(ROOT / "examples", target / "examples")
    return target / "docs"


@pytest.mark.slow
def test_the_site_builds_without_warnings(tmp_path):
    # The pages only: the gallery and the notebook are executed by
    # test_examples.py and nbmake, and when `make docs` builds the site.
    source = _copy_sources(tmp_path)
    out = tmp_path / "html"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "html",
            "-D",
            "plot_gallery=0",
            "-D",
            "nb_execution_mode=off",
            str(source),
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env=dict(os.environ, MPLBACKEND="Agg"),
    )
    assert done.returncode == 0, done.stderr[-6000:]
    for page in ("index", "getting_started", "theory", "changelog", "api/index"):
        assert (out / f"{page}.html").is_file(), page
    for module, name in DOCUMENTED:
        assert (out / "api" / "generated" / f"{module}.{name}.html").is_file()
    assert (out / "_static" / "mathjax" / "MathJax.js").is_file()
    theory = (out / "theory.html").read_text()
    assert theory.count('class="math') > 50
    assert "cdn.jsdelivr.net" not in theory
