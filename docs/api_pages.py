"""Write the API reference pages from the public modules' ``__all__``.

Every public name is documented once, on the page of the shallowest public
module that exports it (``moestat.GaussianMoE``, not
``moestat.estimators.GaussianMoE``). The top-level names are grouped by
hand in ``TOP_LEVEL``; a name missing from the groups stops the build, so
the reference can never fall behind the package.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from sphinx.pycode import ModuleAnalyzer

import moestat

TOP_LEVEL = {
    "Estimators and model choice": [
        "MixtureOfExpertsRegressor",
        "MixtureOfExpertsClassifier",
        "GaussianMoE",
        "PolynomialMoE",
        "MultinomialLogisticMoE",
        "select_model",
        "bootstrap_lrt",
    ],
    "Models and their parameters": ["MixtureOfExperts", "MoEParams", "Design"],
    "Gates": [
        "SoftmaxGate",
        "ModifiedSoftmaxGate",
        "NormalizedSigmoidGate",
        "SharedExpertsGate",
        "GateParams",
        "SharedGateParams",
    ],
    "Expert families": [
        "GaussianExpert",
        "GaussianExpertParams",
        "GLMExpert",
        "GLMExpertParams",
        "MultinomialLogisticExpert",
        "MultinomialExpertParams",
        "ReLUExpert",
        "ReLUExpertParams",
        "StackedExperts",
        "StackedExpertParams",
    ],
    "Inference": ["MoEInferenceResults"],
    "Warnings": [
        "ConvergenceWarning",
        "DegenerateFitWarning",
        "SingularInformationWarning",
    ],
}


def public_modules() -> list[str]:
    """Every importable public module of moestat, shallowest first."""
    names = ["moestat"]
    for info in pkgutil.walk_packages(moestat.__path__, "moestat."):
        parts = info.name.split(".")
        if not any(part.startswith("_") for part in parts):
            names.append(info.name)
    return sorted(names, key=lambda name: (name.count("."), name))


def constant_docs(module: str) -> dict[str, str]:
    """The ``#:`` comments (or docstrings) of a module's top-level names."""
    docs = ModuleAnalyzer.for_module(module).find_attr_docs()
    return {
        name: "\n".join(lines).strip()
        for (scope, name), lines in docs.items()
        if scope == ""
    }


def home_modules(modules: list[str]) -> dict[str, list[str]]:
    """Map each module to the public names documented on its page.

    Classes and functions live on the page of the shallowest module that
    exports them; a constant on the page of the module that documents it
    (autodoc reads a constant's ``#:`` comment from that module's source).
    """
    seen: set = set()
    homes: dict[str, list[str]] = {name: [] for name in modules}
    for name in modules:
        module = importlib.import_module(name)
        exported = getattr(module, "__all__", None)
        if exported is None:
            raise RuntimeError(f"public module {name} has no __all__")
        for attr in exported:
            obj = getattr(module, attr)
            # A constant is the same object under the same name.
            key = id(obj) if callable(obj) else (id(obj), attr)
            if key in seen:
                continue
            seen.add(key)
            home = name if callable(obj) else _documenting_module(attr, name, modules)
            homes[home].append(attr)
    return homes


def _documenting_module(attr: str, exporter: str, modules: list[str]) -> str:
    candidates = [exporter] + [m for m in modules if m.startswith(exporter + ".")]
    for candidate in candidates:
        if attr in constant_docs(candidate):
            return candidate
    return exporter


def _autosummary(module: str, names: list[str]) -> list[str]:
    lines = [
        f".. currentmodule:: {module}",
        "",
        ".. autosummary::",
        "   :toctree: generated/",
        "   :nosignatures:",
        "",
    ]
    lines += [f"   {name}" for name in names]
    return lines + [""]


def _heading(text: str, mark: str) -> list[str]:
    return [text, mark * len(text), ""]


def module_page(module: str, names: list[str]) -> str:
    """The rst page of one module: its docstring, then its names."""
    lines = _heading(f"``{module}``", "=")
    lines += [f".. automodule:: {module}", "   :no-members:", ""]
    if module == "moestat":
        grouped = [name for group in TOP_LEVEL.values() for name in group]
        missing = sorted(set(names) - set(grouped))
        unknown = sorted(set(grouped) - set(names))
        if missing or unknown:
            raise RuntimeError(
                f"docs/api_pages.py TOP_LEVEL: not grouped {missing}, "
                f"not exported {unknown}"
            )
        for title, group in TOP_LEVEL.items():
            lines += _heading(title, "-") + _autosummary(module, group)
    elif names:
        lines += _autosummary(module, names)
    return "\n".join(lines)


def write_api_pages(folder: Path) -> list[str]:
    """Write ``index.rst`` and one page per module into ``folder``."""
    folder.mkdir(exist_ok=True)
    homes = home_modules(public_modules())
    pages = [module for module, names in homes.items() if names]
    for module in pages:
        _write_if_changed(folder / f"{module}.rst", module_page(module, homes[module]))
    index = _heading("API reference", "=") + [
        "Every public name of moestat, on the page of the module that exports",
        "it. The estimators, models, gates and experts are importable from",
        "``moestat`` itself; the PyTorch backend (``moestat.torch``) needs the",
        "``torch`` extra.",
        "",
        ".. toctree::",
        "   :maxdepth: 1",
        "",
    ]
    index += [f"   {module}" for module in pages]
    _write_if_changed(folder / "index.rst", "\n".join(index) + "\n")
    return pages


def _write_if_changed(path: Path, text: str) -> None:
    # Unchanged files keep their time stamps, so Sphinx rebuilds nothing.
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
