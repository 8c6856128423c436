"""The order of the examples within each gallery section: reading order."""

from __future__ import annotations

from pathlib import Path

#: Examples in the order a reader takes them; others follow by file name.
READING_ORDER = (
    # models
    "plot_gaussian_moe_demo.py",
    "plot_polynomial_experts.py",
    "plot_gate_comparison.py",
    "plot_wine_classification.py",
    "plot_engel_food_expenditure.py",
    "plot_from_flexmix.py",
    # rates
    "plot_softmax_gaussian_rates.py",
    "plot_deepseekmoe_rates.py",
    "plot_multinomial_logistic_rates.py",
    "plot_mendes_jiang_rates.py",
    "plot_choose_m_by_bic.py",
    # routing
    "plot_router_diagnostics.py",
    "plot_router_comparison.py",
)


class ReadingOrder:
    """sphinx-gallery sort key: position in ``READING_ORDER``, then name."""

    def __init__(self, src_dir: str | Path) -> None:
        self.src_dir = str(src_dir)

    def __repr__(self) -> str:
        # sphinx-gallery compares configurations by repr.
        return f"<{type(self).__name__}>"

    def __call__(self, filename: str) -> tuple[int, str]:
        """Sort key of one example file."""
        name = Path(filename).name
        if name in READING_ORDER:
            return READING_ORDER.index(name), name
        return len(READING_ORDER), name
