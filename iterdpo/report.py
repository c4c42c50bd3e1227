"""`iterdpo report RUN_DIR`: plots and a Markdown + HTML page of a run, finished or still in progress.

Everything is derived from `RUN_DIR/metrics.jsonl` (one row per round; round 0 is the initial policy's evaluation)
and, when present, the held-out responses in `round_{i:03d}/eval_samples/`. Next to the pages, `plots.json` lists
for each PNG the exact points drawn, so tests (and people) can check that no round went missing from a plot.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iterdpo.atomic import atomic_write, atomic_write_text
from iterdpo.errors import ConfigError

HEADLINE = (("eval/reward_mean",), ("logps/chosen_drift", "logps/rejected_drift"),
            ("safety/refusal_rate", "safety/toxicity_rate", "safety/over_refusal_rate"))
TABLE = ("reward/mean", "eval/reward_mean", "eval/reward_delta_vs_pi0", "eval/win_rate_vs_pi0",
         "kl/policy_to_pi0_k3", "logps/chosen_drift", "logps/rejected_drift", "pairs/count", "loss/mean",
         "sync/parity_max_abs_diff", "safety/refusal_rate", "safety/toxicity_rate", "safety/over_refusal_rate",
         "time/round")
CI = ("_ci_low", "_ci_high")  # a key's 95% interval: <key>_ci_low, <key>_ci_high
SAMPLE_PROMPTS = 3
MAX_RESPONSE_CHARS = 600


@dataclass
class Series:
    key: str
    x: list[int]  # rounds with a finite value, in row order
    y: list[float]
    low: list[float] | None = None  # the 95% interval at each x, where the rows carry one
    high: list[float] | None = None


@dataclass
class Report:
    rows: list[dict[str, Any]]
    config: dict[str, Any]

    @property
    def rounds(self) -> list[int]:
        return [row["round"] for row in self.rows]

    @property
    def rejected(self) -> list[int]:
        return [row["round"] for row in self.rows if not accepted(row)]

    def series(self, key: str) -> Series:
        rows = [row for row in self.rows if _is_number(row.get(key)) and math.isfinite(row[key])]
        series = Series(key, [row["round"] for row in rows], [float(row[key]) for row in rows])
        if rows and all(_is_number(row.get(key + end)) for row in rows for end in CI):
            series.low, series.high = ([float(row[key + end]) for row in rows] for end in CI)
        return series

    def families(self) -> dict[str, list[str]]:
        """Numeric metric keys grouped by the prefix before the first '/'."""
        keys = sorted({key for row in self.rows for key, value in row.items() if _is_number(value)
                       and not key.endswith(CI)} - {"round"})
        grouped: dict[str, list[str]] = {}
        for key in keys:
            grouped.setdefault(key.split("/", 1)[0] if "/" in key else "other", []).append(key)
        return grouped


def accepted(row: dict[str, Any]) -> bool:
    return row.get("gate/accepted", True) is not False


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# -- reading ---------------------------------------------------------------------------------------------------


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of metrics.jsonl; a half-written last line (a run still writing) is ignored."""
    if not path.is_file():
        raise ConfigError(f"{path.parent} is not a run directory: it has no metrics.jsonl")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = []
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines):
                break
            raise ConfigError(f"{path}:{number}: not a JSON row ({err.msg})") from None
        if isinstance(row, dict) and _is_number(row.get("round")):
            rows.append(row)
    return rows


def load_report(run_dir: Path) -> Report:
    config_path = run_dir / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    return Report(read_rows(run_dir / "metrics.jsonl"), config)


def eval_samples(run_dir: Path, rounds: list[int]) -> dict[int, list[dict[str, Any]]]:
    """Held-out responses per round, for rounds whose `eval_samples/` folder exists."""
    folders = {r: run_dir / f"round_{r:03d}" / "eval_samples" for r in rounds}
    folders = {r: folder for r, folder in folders.items() if folder.is_dir()}
    if not folders:
        return {}
    import datasets  # heavy: only when there is something to read

    return {r: datasets.load_from_disk(str(folder)).to_list() for r, folder in folders.items()}


# -- plots -----------------------------------------------------------------------------------------------------


def error_bars(values: list[float], low: list[float], high: list[float]) -> list[list[float]]:
    """matplotlib's [below, above] lengths of each interval. An interval may miss its point by a rounding error
    (a Wilson bound of 7e-18 at a rate of 0, in rows written before that bound was exact): a bar is never negative."""
    return [[max(0.0, v - lo) for v, lo in zip(values, low)], [max(0.0, hi - v) for v, hi in zip(values, high)]]


def plot(report: Report, panels: list[list[Series]], path: Path, title: str) -> dict[str, Any]:
    """One figure, one panel per series group; rejected rounds shaded and crossed. Returns what was drawn."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no screen (Agg canvas)
    from matplotlib.ticker import MaxNLocator

    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(5 * ncols, 3.2 * nrows), layout="constrained")
    fig.suptitle(title)
    for ax, group in zip(fig.subplots(nrows, ncols, squeeze=False).flat, panels):
        for series in group:
            by_round = dict(zip(series.x, series.y))
            ys = [by_round.get(r, math.nan) for r in report.rounds]  # NaN: a visible gap, not a silent join
            line, = ax.plot(report.rounds, ys, marker="o", markersize=4, label=series.key)
            if series.low is not None:  # the 95% interval of each point
                ax.errorbar(series.x, series.y, yerr=error_bars(series.y, series.low, series.high),
                            fmt="none", ecolor=line.get_color(), capsize=3, alpha=0.7)
            bad = [(x, y) for x, y in zip(series.x, series.y) if x in report.rejected]
            ax.plot([x for x, _ in bad], [y for _, y in bad], "x", color="red", markersize=10, mew=2)
        for r in report.rejected:
            ax.axvspan(r - 0.4, r + 0.4, color="red", alpha=0.12, lw=0)
        ax.set_title(", ".join(s.key for s in group), fontsize=9)
        ax.set_xlabel("round (red: rejected by the gate)" if report.rejected else "round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(min(report.rounds) - 0.5, max(report.rounds) + 0.5)  # same rounds on every panel
        ax.grid(alpha=0.3)
        if len(group) > 1:
            ax.legend(fontsize=7)
    for ax in list(fig.axes)[len(panels):]:
        ax.set_visible(False)
    atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=100))
    series = {s.key: {"x": s.x, "y": s.y, **({"low": s.low, "high": s.high} if s.low is not None else {})}
              for group in panels for s in group}
    return {"title": title, "rejected_rounds": report.rejected, "series": series}


def plot_all(report: Report, out_dir: Path) -> dict[str, dict[str, Any]]:
    """Headline plot first, then one PNG per metric family; empty series and families are left out."""
    def groups(key_groups: list[tuple[str, ...]]) -> list[list[Series]]:
        found = [[s for s in map(report.series, keys) if s.x] for keys in key_groups]
        return [group for group in found if group]

    figures = {"headline.png": ("Headline", groups(list(HEADLINE)))}
    for family, keys in report.families().items():
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", family)
        figures[f"family_{name}.png"] = (f"{family}/*", groups([(key,) for key in keys]))
    return {name: plot(report, panels, out_dir / name, title) for name, (title, panels) in figures.items() if panels}


# -- tables ----------------------------------------------------------------------------------------------------


def fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={fmt(v)}" for k, v in value.items())
    return str(value)


def round_table(report: Report) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the per-round table: the TABLE columns some row has, values with their intervals."""
    columns = [k for k in TABLE if any(k in row for row in report.rows)]
    varying = _varying_settings(report.rows)
    body = []
    for row in report.rows:
        gate = "yes" if accepted(row) else f"REJECTED: {row.get('gate/reason', 'no reason given')}"
        settings = [fmt({k: v for k, v in (row.get("settings") or {}).items() if k in varying})] if varying else []
        body.append([str(row["round"]), gate, *(with_interval(row, k) for k in columns), *settings])
    return ["round", "accepted", *columns] + (["settings (changing)"] if varying else []), body


def with_interval(row: dict[str, Any], key: str) -> str:
    """The value, and its 95% interval where the row has one: "0.6436 [0.6012, 0.6851]"."""
    low, high = row.get(key + CI[0]), row.get(key + CI[1])
    if _is_number(low) and _is_number(high):
        return f"{fmt(row.get(key))} [{fmt(float(low))}, {fmt(float(high))}]"
    return fmt(row.get(key))


def _varying_settings(rows: list[dict[str, Any]]) -> set[str]:
    values: dict[str, set[str]] = {}
    for row in rows:
        for key, value in (row.get("settings") or {}).items():
            values.setdefault(key, set()).add(json.dumps(value))
    return {key for key, seen in values.items() if len(seen) > 1}


def summary(report: Report) -> list[tuple[str, str]]:
    done = [row for row in report.rows if row["round"] >= 1]
    planned = report.config.get("run", {}).get("rounds")
    first = next((row for row in report.rows if row["round"] == 0), {})
    last = next((row for row in reversed(report.rows) if "eval/reward_mean" in row), {})
    initial, final = first.get("eval/reward_mean"), last.get("eval/reward_mean")
    change = f" ({final - initial:+.4g})" if _is_number(initial) and _is_number(final) else ""
    change += f" (round {fmt(last.get('round'))})"
    return [
        ("rounds done", f"{len(done)}" + (f" of {planned}" if planned else "")),
        ("rejected rounds", ", ".join(map(str, report.rejected)) or "none"),
        ("eval/reward_mean initial → final", f"{fmt(initial)} → {fmt(final)}{change}"),
        ("reference source", fmt(done[-1].get("reference/source")) if done else "–"),
        ("settings (first round)", fmt(done[0].get("settings")) if done else "–"),
    ]


def sample_tables(report: Report, samples: dict[int, list[dict[str, Any]]]) -> list[tuple[str, list[list[str]]]]:
    """For a few held-out prompts: (prompt, [round, accepted, score, response] per round)."""
    first_of = {r: {} for r in samples}  # round -> prompt_index -> first sample
    for r, records in samples.items():
        for record in records:
            first_of[r].setdefault(record["prompt_index"], record)
    prompts = sorted({i for by_prompt in first_of.values() for i in by_prompt})[:SAMPLE_PROMPTS]
    verdict = {row["round"]: "yes" if accepted(row) else "REJECTED" for row in report.rows}
    tables = []
    for index in prompts:
        hits = [(r, first_of[r][index]) for r in sorted(first_of) if index in first_of[r]]
        cells = [[str(r), verdict.get(r, "–"), fmt(s.get("score")), _clip(s["text"])] for r, s in hits]
        tables.append((hits[0][1]["prompt"], cells))
    return tables


def _clip(text: str) -> str:
    return text if len(text) <= MAX_RESPONSE_CHARS else text[:MAX_RESPONSE_CHARS] + " […]"


# -- pages -----------------------------------------------------------------------------------------------------


def md_table(header: list[str], body: list[list[str]]) -> str:
    def cells(row: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in row) + " |"

    return "\n".join([cells(header), cells(["---"] * len(header)), *map(cells, body)])


def html_table(header: list[str], body: list[list[str]]) -> str:
    def tr(row: list[str], tag: str) -> str:
        rejected = tag == "td" and row[1].startswith("REJECTED")
        inner = "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in row)
        return f'<tr class="rejected">{inner}</tr>' if rejected else f"<tr>{inner}</tr>"

    return "<table>" + tr(header, "th") + "".join(tr(row, "td") for row in body) + "</table>"


def markdown_page(name: str, facts: list[tuple[str, str]], plots: list[str], table: tuple, samples: list) -> str:
    parts = [f"# Run report: {name}", "", *(f"- **{k}**: {v}" for k, v in facts), "", "## Plots", ""]
    parts += [f"![{p}]({p})\n" for p in plots] + ["", "## Rounds", "", md_table(*table), "", "## Sample responses"]
    for prompt, cells in samples:
        parts += ["", f"**Prompt:** {prompt}", "", md_table(["round", "accepted", "score", "response"], cells)]
    if not samples:
        parts += ["", "No `eval_samples/` folders in this run."]
    return "\n".join(parts) + "\n"


CSS = ("body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;margin:1em 0}"
       "td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px;vertical-align:top;white-space:pre-wrap}"
       "tr.rejected{background:#fdd}img{max-width:100%;display:block;margin:1em 0}")


def html_page(name: str, facts: list[tuple[str, str]], plots: list[str], table: tuple, samples: list) -> str:
    esc = html.escape
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(name)}</title>",
             f"<style>{CSS}</style></head><body><h1>Run report: {esc(name)}</h1><ul>"]
    parts += [f"<li><b>{esc(k)}</b>: {esc(v)}</li>" for k, v in facts] + ["</ul><h2>Plots</h2>"]
    parts += [f'<img src="{esc(p)}" alt="{esc(p)}">' for p in plots]
    parts += ["<h2>Rounds</h2>", html_table(*table), "<h2>Sample responses</h2>"]
    for prompt, cells in samples:
        parts += [f"<h3>{esc(prompt)}</h3>", html_table(["round", "accepted", "score", "response"], cells)]
    if not samples:
        parts.append("<p>No <code>eval_samples/</code> folders in this run.</p>")
    return "\n".join(parts) + "\n</body></html>\n"


def write_report(run_dir: Path, out_dir: Path | None = None) -> Path:
    """Writes report.md, report.html, plots.json and the PNGs into out_dir (default RUN_DIR/report)."""
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "report"
    report = load_report(run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = plot_all(report, out_dir)
    atomic_write_text(out_dir / "plots.json", json.dumps(plots, indent=1))
    args = (run_dir.resolve().name, summary(report), list(plots), round_table(report),
            sample_tables(report, eval_samples(run_dir, report.rounds)))
    atomic_write_text(out_dir / "report.md", markdown_page(*args))
    atomic_write_text(out_dir / "report.html", html_page(*args))
    return out_dir / "report.html"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="iterdpo report", description="Plots and a Markdown + HTML page of a run.")
    parser.add_argument("run_dir", type=Path, help="run directory holding metrics.jsonl")
    parser.add_argument("--out", type=Path, help="output folder (default: RUN_DIR/report)")
    args = parser.parse_args(argv)
    try:
        print(write_report(args.run_dir, args.out))
    except ConfigError as err:
        print(f"iterdpo: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
