"""The price table: one region's list prices as a JSON file kept in the repository.

Prices are data, not code, so a deployer in another region copies the file, edits the numbers
and passes ``--prices FILE``; the default table says which region, the date its figures were
taken and their source, and every report repeats those three.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_TABLE = Path(__file__).with_name("prices_us_east_1.json")
REQUIRED = ("region", "currency", "taken", "source", "hoursPerMonth")


class PriceError(KeyError):
    """The table has no price for something the templates declare: a silent $0 would lie."""

    def __str__(self) -> str:  # KeyError quotes its argument; this is a sentence
        return str(self.args[0])


@dataclass(frozen=True)
class Prices:
    data: dict[str, Any]
    path: Path

    @property
    def region(self) -> str:
        return str(self.data["region"])

    @property
    def taken(self) -> str:
        return str(self.data["taken"])

    @property
    def source(self) -> str:
        return str(self.data["source"])

    @property
    def hours(self) -> float:
        """Hours in a billing month (AWS's own calculator uses 730)."""
        return float(self.data["hoursPerMonth"])

    def get(self, *keys: str) -> Any:
        """``get("rds", "postgresInstanceHour", "db.t4g.micro")``; a missing key names the
        whole path and the table, so the fix is obvious."""
        node: Any = self.data
        for depth, key in enumerate(keys):
            if not isinstance(node, dict) or key not in node:
                raise PriceError(
                    f"no price for {'.'.join(keys[: depth + 1])} in {self.path.name}: add it "
                    "(or pass --prices with a table that has it)"
                )
            node = node[key]
        return node

    def price(self, *keys: str) -> float:
        return float(self.get(*keys))


def load(path: Path | None = None) -> Prices:
    table = path or DEFAULT_TABLE
    data = json.loads(table.read_text(encoding="utf-8"))
    missing = [key for key in REQUIRED if key not in data]
    if missing:
        raise PriceError(f"{table} lacks {missing}: a price table says where and when")
    return Prices(data=data, path=table)
