"""Sphinx configuration of the moestat documentation.

``make docs`` builds it into ``docs/_build/html`` with warnings as errors.
The API reference is generated from every public module's ``__all__``
(``api_pages.py``), the gallery from ``examples/`` (sphinx-gallery) and the
notebooks from ``examples/notebooks`` (MyST-NB); both are executed during
the build.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(DOCS))

from api_pages import write_api_pages  # noqa: E402

import moestat  # noqa: E402

project = "moestat"
author = "the moestat developers"
copyright = "2026, the moestat developers"  # noqa: A001
release = moestat.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "sphinx_design",
    "myst_nb",
]

templates_path = ["_templates"]
exclude_patterns = [
    "_build",
    "**.ipynb_checkpoints",
    # sphinx-gallery writes a notebook beside each example's page.
    "auto_examples/**.ipynb",
    "auto_examples/**.py",
]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"
nitpicky = False

# -- API reference -----------------------------------------------------------
write_api_pages(DOCS / "api")
autosummary_generate = True
autosummary_imported_members = True
autodoc_typehints = "none"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_attributes_as_param_list = True
numpydoc_xref_param_type = False

# -- Markdown and notebooks (MyST-NB) ----------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 4
myst_update_mathjax = False
nb_execution_mode = "force"
nb_execution_timeout = 600
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_execution_excludepatterns = ["auto_examples/*"]
nb_merge_streams = True

NOTEBOOKS = ROOT / "examples" / "notebooks"


def copy_notebooks(target: Path) -> None:
    """Copy ``examples/notebooks`` into the source tree (the files live there)."""
    target.mkdir(exist_ok=True)
    for stale in target.glob("*.ipynb"):
        stale.unlink()
    for notebook in sorted(NOTEBOOKS.glob("*.ipynb")):
        shutil.copy2(notebook, target / notebook.name)


copy_notebooks(DOCS / "notebooks")

# -- Gallery -----------------------------------------------------------------
sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "ignore_pattern": r"__init__\.py",
    "subsection_order": [
        f"../examples/{name}" for name in ("models", "rates", "routing")
    ],
    "within_subsection_order": "gallery_order.ReadingOrder",
    "abort_on_example_error": True,
    "remove_config_comments": True,
    "download_all_examples": False,
    "show_memory": False,
    "reset_modules": ("matplotlib",),
    "matplotlib_animations": False,
    # "Examples using X" on the API pages.
    "doc_module": ("moestat",),
    "backreferences_dir": "api/backreferences",
}

# -- HTML --------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"moestat {release}"
html_static_path = ["_static"]
html_css_files = ["moestat.css"]
html_show_sourcelink = False
html_theme_options = {
    "navbar_align": "left",
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_sidebars = {"index": [], "changelog": []}


def _local_mathjax() -> Path | None:
    """MathJax shipped by ``jupyter-server-mathjax`` (the ``docs`` extra)."""
    try:
        import jupyter_server_mathjax
    except ImportError:
        return None
    static = Path(jupyter_server_mathjax.__file__).parent / "static"
    return static if (static / "MathJax.js").is_file() else None


# The site renders its formulas offline: MathJax is copied into the build
# rather than fetched from a CDN when a page is read.
MATHJAX = _local_mathjax()
if MATHJAX is not None:
    mathjax_path = "mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full"
    mathjax2_config = {
        "tex2jax": {
            "inlineMath": [["\\(", "\\)"]],
            "displayMath": [["\\[", "\\]"]],
            "processRefs": False,
            "processEnvironments": False,
        },
        # The bundled fonts are STIX-Web (the ones Jupyter ships).
        "HTML-CSS": {
            "availableFonts": [],
            "preferredFont": None,
            "webFont": "STIX-Web",
            "imageFont": None,
        },
        "showMathMenu": False,
        "messageStyle": "none",
    }


def copy_mathjax(app, exception) -> None:
    """Put the local MathJax beside the built pages."""
    if exception is not None or MATHJAX is None or app.builder.format != "html":
        return
    target = Path(app.outdir) / "_static" / "mathjax"
    if not (target / "MathJax.js").is_file():
        shutil.copytree(MATHJAX, target, dirs_exist_ok=True)


def skip_metadata_requests(app, what, name, obj, skip, options):
    """Leave out scikit-learn's generated ``set_*_request`` methods."""
    if name.startswith("set_") and name.endswith("_request"):
        return True
    return None


def setup(app) -> None:
    """Register the build hooks."""
    app.connect("autodoc-skip-member", skip_metadata_requests)
    app.connect("build-finished", copy_mathjax)
