"""Cells and tables of the pages reports and comparisons write, in Markdown and HTML (escaped)."""

from __future__ import annotations

import html
import math
from typing import Any

from iterdpo.rundir.runs import CI, is_number

CSS = ("body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;margin:1em 0}"
       "td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px;vertical-align:top;white-space:pre-wrap}"
       "tr.rejected{background:#fdd}img{max-width:100%;display:block;margin:1em 0}"
       "table.headline td,table.headline th{font-size:15px;padding:5px 10px}")


def fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={fmt(v)}" for k, v in value.items())
    return str(value)


def with_interval(row: dict[str, Any], key: str) -> str:
    """The value, and its 95% interval where the row has one: "0.6436 [0.6012, 0.6851]"."""
    low, high = row.get(key + CI[0]), row.get(key + CI[1])
    if is_number(low) and is_number(high):
        return f"{fmt(row.get(key))} [{fmt(float(low))}, {fmt(float(high))}]"
    return fmt(row.get(key))


def md_table(header: list[str], body: list[list[str]]) -> str:
    def cells(row: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in row) + " |"

    return "\n".join([cells(header), cells(["---"] * len(header)), *map(cells, body)])


def html_table(header: list[str], body: list[list[str]], css_class: str = "") -> str:
    """A table; a body row whose second cell starts with REJECTED is shaded."""
    def tr(row: list[str], tag: str) -> str:
        rejected = tag == "td" and len(row) > 1 and row[1].startswith("REJECTED")
        inner = "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in row)
        return f'<tr class="rejected">{inner}</tr>' if rejected else f"<tr>{inner}</tr>"

    opening = f'<table class="{css_class}">' if css_class else "<table>"
    return opening + tr(header, "th") + "".join(tr(row, "td") for row in body) + "</table>"
