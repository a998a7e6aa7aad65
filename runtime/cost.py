"""Cost of model usage from the per-model price table in settings (USD per million tokens), and the
rounding every cost figure gets (``round_usd``: the logged costs and the review's sums of them)."""
from __future__ import annotations

from runtime.types import Usage


def usage_cost(prices: dict[str, dict[str, float]], model: str, usage: Usage) -> float:
    """USD for ``usage`` on ``model``; models missing from the table (e.g. local ones) cost 0."""
    price = prices.get(model)
    if not price:
        return 0.0
    return round_usd(
        usage.prompt_tokens * price.get("input_per_1m", 0.0) / 1e6
        + usage.completion_tokens * price.get("output_per_1m", 0.0) / 1e6
    )


def round_usd(value: float | None) -> float:
    """USD to 8 decimals, as costs are logged; ``None`` (an SQL sum over no rows) is 0."""
    return round(value or 0.0, 8)
