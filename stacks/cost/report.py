"""Renderings of the lines: plain text for the terminal, Markdown for docs/deploy.md."""

from __future__ import annotations

from stacks.cost.model import Line, total
from stacks.cost.prices import Prices


def savings(lines: list[Line]) -> dict[str, tuple[float, str]]:
    """Each choice's monthly saving (lines of one choice added up: an instance and its
    storage) and its settings."""
    found: dict[str, tuple[float, str]] = {}
    for line in lines:
        if line.saving > 0.005:
            saved, switch = found.get(line.saving_what, (0.0, ""))
            switches = ", ".join(
                dict.fromkeys(filter(None, [*switch.split(", "), *line.switch.split(", ")]))
            )
            found[line.saving_what] = (saved + line.saving, switches)
    return found


def money(value: float) -> str:
    return f"${value:,.2f}"


def unit_price(line: Line) -> str:
    return f"${line.unit_price:.6g}"


def count(value: float) -> str:
    return f"{value:,.4g}" if value < 1000 else f"{value:,.0f}"


def describe(line: Line) -> str:
    """``1 x $0.045 x 730 h``; a per-month unit shows no quantity."""
    quantity = "" if line.quantity == 1 else f" x {line.quantity:g}"
    unit = line.unit if line.quantity != 1 else f"/{line.unit}"
    return f"{count(line.count)} x {unit_price(line)}{quantity} {unit}".replace(" /", " per ")


def header(env: str, p: Prices) -> str:
    return (
        f"offload {env}: {p.region} list prices taken {p.taken} ({p.path.name}); "
        f"{p.hours:g} h a month"
    )


def text_lines(lines: list[Line], width: int = 64) -> list[str]:
    return [
        f"  {line.item:<{width}} {describe(line):<36} {money(line.monthly):>11}" for line in lines
    ]


def baseline_text(env: str, lines: list[Line], p: Prices, unpriced: list[str]) -> str:
    out = [header(env, p), "", "monthly baseline (idle: no uploads):", *text_lines(lines)]
    if unpriced:
        out.append(f"  NOT PRICED (add them to stacks/cost/baseline.py): {', '.join(unpriced)}")
    out.append(f"total: {money(total(lines))} / month")
    choices = savings(lines)
    if choices:
        out += ["", "what each choice costs (turn it off to save):"]
        out += [
            f"  {what:<64} {money(saved):>11} / month  ({switch})"
            for what, (saved, switch) in choices.items()
        ]
    return "\n".join(out)


def usage_text(title: str, lines: list[Line], closing: str) -> str:
    return "\n".join([title, *text_lines(lines), f"{closing}: {money(total(lines))}"])


def markdown_table(lines: list[Line], total_label: str) -> str:
    rows = ["| item | count x unit price | per month |", "| --- | --- | ---: |"]
    rows += [f"| {line.item} | {describe(line)} | {money(line.monthly)} |" for line in lines]
    rows.append(f"| **{total_label}** | | **{money(total(lines))}** |")
    return "\n".join(rows)


def choices_markdown(by_env: dict[str, list[Line]]) -> str:
    rows = [
        "| environment | choice | setting (cdk.json) | saves per month |",
        "| --- | --- | --- | ---: |",
    ]
    for env, lines in by_env.items():
        for what, (saved, switch) in savings(lines).items():
            rows.append(f"| {env} | {what} | `{switch}` | {money(saved)} |")
    return "\n".join(rows)
