"""What a WhatsApp message costs: Meta's per-message pricing (PMP, billed per delivered template since 1 July 2025).

Meta charges per template message by its category (``marketing``, ``utility``, ``authentication``; also
``authentication_international`` and ``marketing_lite`` in some markets) and the recipient's country; service
messages (free-form replies inside the customer's 24-hour window) are free, and so is a ``utility`` template sent
while that window is open. The status webhook's ``pricing`` object (``billable``, ``category``, ``type``:
``regular`` / ``free_customer_service`` / ``free_entry_point``) says what Meta billed.

The price table is ``Settings.whatsapp_prices`` (USD per billable message): a key is a category (the price for any
country) or ``category:prefix`` with the recipient's country calling code or a longer prefix of the number
(``"marketing:55"`` for Brazil, ``"marketing:1"`` for North America); the longest matching prefix wins, then the
category alone, else 0. E.g. ``{"marketing": 0.05, "marketing:55": 0.0625, "utility:55": 0.0068}``.

Decisions:
- A message is priced when Meta takes it (``estimate``): a template by its template's category at that moment
  (0 for ``utility`` while the window is open), anything else as ``service`` (0). ``billable`` stays None: an
  estimate. Meta's status with ``pricing`` replaces it (``confirmed``): billable at the category's price for the
  recipient, or 0. A message never taken (failed) costs 0.
- Customers known only by a business-scoped user id (no number) match no prefix: the category's own price.
"""
from __future__ import annotations

from runtime.models import Message

SERVICE = "service"
FREE_IN_WINDOW = frozenset({SERVICE, "utility"})  # Meta: free inside an open customer service window


def price(prices: dict[str, float], category: str | None, recipient: str | None) -> float:
    """The table's price of one billable message of ``category`` to ``recipient`` (see the module docstring)."""
    if not category:
        return 0.0
    category = category.lower()
    digits = "".join(c for c in (recipient or "") if c.isdigit()) if not _is_bsuid(recipient) else ""
    best: tuple[int, float] | None = None
    for key, value in prices.items():
        name, _, prefix = key.lower().partition(":")
        if name != category or not prefix or not digits.startswith(prefix):
            continue
        if best is None or len(prefix) > best[0]:
            best = (len(prefix), float(value))
    if best is not None:
        return best[1]
    return float(prices.get(category, 0.0))


def estimate(prices: dict[str, float], message: Message, recipient: str, window_open: bool) -> tuple[str, float]:
    """The category and price of ``message`` as it is taken by Meta, before Meta's status confirms it."""
    if message.kind != "template":
        return SERVICE, 0.0
    category = str((message.payload or {}).get("category") or "").lower() or "marketing"
    if window_open and category in FREE_IN_WINDOW:
        return category, 0.0
    return category, price(prices, category, recipient)


def confirmed(prices: dict[str, float], billable: bool | None, category: str | None, recipient: str) -> float:
    """The cost Meta's status ``pricing`` says: the category's price if billable, else 0."""
    return price(prices, category, recipient) if billable else 0.0


def _is_bsuid(recipient: str | None) -> bool:
    return bool(recipient) and "." in str(recipient)
