"""A line of the bill: what, how many, at what unit price, for how long."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class Line:
    """``count x unit_price x quantity``: e.g. 2 NAT gateways x $0.045/h x 730 h.

    ``switch`` names the ``cdk.json`` setting that decides the line (so a deployer sees what
    to change), and ``saving`` what turning that choice off would save each month: for
    high-availability choices, the price of the availability (docs/deploy.md's HA table)."""

    item: str
    count: float
    unit_price: float
    quantity: float
    unit: str
    switch: str = ""
    saving: float = 0.0
    saving_what: str = ""

    @property
    def monthly(self) -> float:
        return self.count * self.unit_price * self.quantity


def total(lines: list[Line]) -> float:
    return sum(line.monthly for line in lines)
