"""Shared fixtures and guards for the test suite.

- The base seed is printed in the report header and can be overridden with
  ``--seed N`` (or the ``MOESTAT_TEST_SEED`` environment variable).
- A test that touches numpy's global random state, or leaves a matplotlib
  figure open, fails.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest


def pytest_addoption(parser):
    parser.addoption(
        "--seed",
        type=int,
        default=int(os.environ.get("MOESTAT_TEST_SEED", "0")),
        help="base seed of the randomised tests",
    )


def pytest_report_header(config):
    return f"moestat test seed: {config.getoption('--seed')} (override with --seed)"


@pytest.fixture
def seed(request) -> int:
    return request.config.getoption("--seed")


@pytest.fixture
def rng(seed) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.fixture(autouse=True)
def _global_rng_untouched(request):
    if request.node.get_closest_marker("uses_global_rng"):
        # Third-party checks (scikit-learn's) that draw from it themselves.
        yield
        return
    before = np.random.get_state()[1].copy()  # noqa: NPY002 (the guard itself)
    yield
    after = np.random.get_state()[1]  # noqa: NPY002
    assert np.array_equal(before, after), "the test touched numpy's global RNG"


@pytest.fixture(autouse=True)
def _no_open_figures():
    yield
    if "matplotlib.pyplot" in sys.modules:
        plt = sys.modules["matplotlib.pyplot"]
        open_figures = plt.get_fignums()
        plt.close("all")
        assert not open_figures, f"the test left figures open: {open_figures}"


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


#: Test files whose tests each take tens of seconds (the gallery, the
#: benchmark scripts, the site build).
LONG_FILES = ("test_examples.py", "test_benchmarks.py", "test_docs.py")


def _runs_long(item) -> bool:
    return item.path.name in LONG_FILES or item.get_closest_marker("slow") is not None


def pytest_collection_modifyitems(config, items):
    # the long tests first: two workers then finish together instead of one
    # of them running the last long test alone
    items.sort(key=lambda item: not _runs_long(item))
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items or _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none here)")
    for item in gpu_items:
        item.add_marker(skip)


def pytest_runtest_setup(item):
    # Two test workers share two cores: torch's intra-op threads would only
    # contend (small problems run many times slower), so run them one each.
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != 1:
        torch.set_num_threads(1)
