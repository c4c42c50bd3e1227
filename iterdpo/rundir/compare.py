"""`iterdpo compare RUN_DIR... [--out DIR]`: runs side by side on one page (Markdown + HTML, like a report).

- the settings that differ between the runs (every other setting is the same and left out);
- per round, each run's headline figures with their 95% intervals;
- each run against the first, response by response on the held-out prompts, at the last round both evaluated (or
  at each one's last evaluation, for runs evaluated at different rounds): the reward's mean difference and the win
  rate, with 95% bootstrap intervals over prompts;
- plots with one line per run: the held-out reward, the chosen and rejected drift, the safety rates, and the
  reward-KL frontier: held-out reward against KL to pi0 per sequence, one point per round, with interval bars on
  both axes. `plots.json` lists the points drawn.
Runs of different lengths, losses and models are fine; a folder that is not a run is a one-line error.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from iterdpo.core.atomic import atomic_write, atomic_write_text
from iterdpo.core.errors import ConfigError
from iterdpo.evaluation.intervals import paired_change, win
from iterdpo.rundir.pages import CSS, fmt, html_table, md_table, with_interval
from iterdpo.rundir.plots import draw, honest_limits
from iterdpo.rundir.runs import CI, Report, eval_samples, finite, load_report

HEADLINE = ("eval/reward_mean", "eval/reward_delta_vs_pi0", "eval/win_rate_vs_pi0", "kl/policy_to_pi0_k3",
            "logps/chosen_drift", "logps/rejected_drift", "safety/refusal_rate", "safety/toxicity_rate",
            "safety/over_refusal_rate")
PANELS = (("held-out reward", ("eval/reward_mean",)), ("chosen drift", ("logps/chosen_drift",)),
          ("rejected drift", ("logps/rejected_drift",)), ("refusal rate", ("safety/refusal_rate",)),
          ("toxicity rate", ("safety/toxicity_rate",)), ("over-refusal rate", ("safety/over_refusal_rate",)))
FRONTIER = ("kl/policy_to_pi0_k3", "eval/reward_mean")  # x, y


def load_runs(run_dirs: list[Path]) -> dict[str, Report]:
    """Each run by a label: its folder's name, or as much of its path as tells it from the others."""
    if len(run_dirs) < 2:
        raise ConfigError(f"compare: expected at least two run directories, got {len(run_dirs)}")
    reports = [load_report(Path(run_dir)) for run_dir in run_dirs]
    parts = [Path(run_dir).resolve().parts for run_dir in run_dirs]
    depth = 1
    while len({part[-depth:] for part in parts}) < len(parts) and depth < max(map(len, parts)):
        depth += 1
    return {"/".join(part[-depth:]): report for part, report in zip(parts, reports)}


def differing_settings(runs: dict[str, Report]) -> tuple[list[str], list[list[str]]]:
    """A table of the config values (and each round's settings) that are not the same in every run."""
    flat = {label: _flatten(report.config) for label, report in runs.items()}
    keys = sorted({key for values in flat.values() for key in values})
    differing = [key for key in keys if len({json.dumps(values.get(key)) for values in flat.values()}) > 1]
    return ["setting", *runs], [[key, *(fmt(flat[label].get(key)) for label in runs)] for key in differing]


def headline_table(runs: dict[str, Report]) -> tuple[list[str], list[list[str]]]:
    columns = [key for key in HEADLINE if any(key in row for report in runs.values() for row in report.rows)]
    body = [[label, str(row["round"]), *(with_interval(row, key) for key in columns)]
            for label, report in runs.items() for row in report.rows]
    return ["run", "round", *columns], body


def paired_table(runs: dict[str, Report], run_dirs: list[Path]) -> tuple[list[str], list[list[str]]]:
    """Each run against the first on the same held-out responses' positions (same prompts, in the same order; with
    the same seed, the same sampling seeds too): `eval/reward_mean` difference and win rate at the last round both
    evaluated (or, where they share none after pi0's, at each run's last evaluation), each with its 95% interval over
    prompts, from the runs' saved `round_*/eval_samples`."""
    (base_label, base), *others = runs.items()
    dirs = dict(zip(runs, map(Path, run_dirs)))
    base_samples: dict[int, list[dict[str, Any]] | None] = {}  # the first run's, read once per round
    body = []
    for label, report in others:
        last = max(_evaluated(base) & _evaluated(report), default=None)
        # runs evaluated at different rounds (`run.eval_every`, e.g. 3 rounds of 48 prompts against 18 of 8): each
        # run's last evaluation, where each ended
        base_round, other_round = (last, last) if last is not None else (max(_evaluated(base), default=None),
                                                                         max(_evaluated(report), default=None))
        rounds = str(base_round) if base_round == other_round else f"{base_round} vs {other_round}"
        if base_round is not None and base_round not in base_samples:
            base_samples[base_round] = eval_samples(dirs[base_label], [base_round]).get(base_round)
        first = None if base_round is None else base_samples[base_round]
        second = None if other_round is None else eval_samples(dirs[label], [other_round]).get(other_round)
        if not first or not second:
            body.append([label, "–", "no held-out responses saved for a round both reached", "–", "–"])
            continue
        if [row["prompt"] for row in first] != [row["prompt"] for row in second]:
            body.append([label, rounds, "the runs' held-out prompts differ: no pairing", "–", "–"])
            continue
        now, before = [row["score"] for row in second], [row["score"] for row in first]
        prompts = [row["prompt_index"] for row in second]
        change = {**paired_change("difference", now, before, prompts),
                  **paired_change("wins", now, before, prompts, win)}
        body.append([label, rounds, with_interval(change, "difference"), with_interval(change, "wins"),
                     str(len(now))])
    headers = ["run", "round", f"eval/reward_mean minus {base_label}'s", f"win rate against {base_label}", "responses"]
    return headers, body


def _evaluated(report: Report) -> set[int]:
    """The rounds after pi0's that were evaluated (every one, or every `run.eval_every`)."""
    return {row["round"] for row in report.rows if row["round"] > 0 and "eval/reward_mean" in row}


def plot_compare(runs: dict[str, Report], out_dir: Path) -> dict[str, Any]:
    """compare.png (a panel per headline metric, a line per run) and frontier.png; returns what was drawn."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    drawn: dict[str, Any] = {"compare.png": {}, "frontier.png": {}}
    fig = Figure(figsize=(15, 6.4), layout="constrained")
    for ax, (title, keys) in zip(fig.subplots(2, 3).flat, PANELS):
        shown = []
        for label, report in runs.items():
            for key in keys:
                series = report.series(key)
                if not series.x:
                    continue
                draw(ax, series.x, series.y, series.low, series.high, label)
                shown.append(series)
                drawn["compare.png"].setdefault(key, {})[label] = {"x": series.x, "y": series.y}
        honest_limits(ax, shown)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=7)
    atomic_write(out_dir / "compare.png", lambda handle: fig.savefig(handle, format="png", dpi=100))

    fig = Figure(figsize=(7, 5), layout="constrained")
    ax = fig.subplots()
    for label, report in runs.items():
        points = [row for row in report.rows if all(finite(row.get(key)) for key in FRONTIER)]
        if not points:
            continue
        xs, ys = [row[FRONTIER[0]] for row in points], [row[FRONTIER[1]] for row in points]
        line = draw(ax, xs, ys, *_bounds(points, FRONTIER[1]), label, xerr=_bounds(points, FRONTIER[0]))
        for row, x, y in zip(points, xs, ys):
            ax.annotate(str(row["round"]), (x, y), fontsize=7, color=line.get_color(), xytext=(3, 3),
                        textcoords="offset points")
        drawn["frontier.png"][label] = {"rounds": [row["round"] for row in points], "x": xs, "y": ys}
    ax.set_xlabel("KL to pi0 per held-out sequence (kl/policy_to_pi0_k3, nats)")
    ax.set_ylabel("held-out reward (eval/reward_mean)")
    ax.set_title("reward-KL frontier (a point per round, 95% intervals)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    atomic_write(out_dir / "frontier.png", lambda handle: fig.savefig(handle, format="png", dpi=100))
    return drawn


def write_compare(run_dirs: list[Path], out_dir: Path) -> Path:
    runs = load_runs(run_dirs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    drawn = plot_compare(runs, out_dir)
    atomic_write_text(out_dir / "plots.json", json.dumps(drawn, indent=1))
    settings, headline, paired = differing_settings(runs), headline_table(runs), paired_table(runs, run_dirs)
    names = ", ".join(runs)
    first = next(iter(runs))
    markdown = "\n".join([
        f"# Runs compared: {names}", "", "## Settings that differ", "",
        md_table(*settings) if settings[1] else "None: the runs share every setting.", "",
        f"## Against {first}, response by response (95% intervals over prompts)", "", md_table(*paired), "",
        "## Plots", "", "![compare](compare.png)", "", "![frontier](frontier.png)", "",
        "## Headline figures per round (95% intervals)", "", md_table(*headline), ""])
    atomic_write_text(out_dir / "compare.md", markdown)
    page = "\n".join([
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(names)}</title>",
        f"<style>{CSS}</style></head><body><h1>Runs compared: {html.escape(names)}</h1>",
        "<h2>Settings that differ</h2>",
        html_table(*settings) if settings[1] else "<p>None: the runs share every setting.</p>",
        f"<h2>Against {html.escape(first)}, response by response (95% intervals over prompts)</h2>",
        html_table(*paired),
        "<h2>Plots</h2>", '<img src="compare.png" alt="compare">', '<img src="frontier.png" alt="frontier">',
        "<h2>Headline figures per round (95% intervals)</h2>", html_table(*headline), "</body></html>", ""])
    atomic_write_text(out_dir / "compare.html", page)
    return out_dir / "compare.html"


def _bounds(rows: list[dict[str, Any]], key: str) -> tuple[list[float] | None, list[float] | None]:
    if all(finite(row.get(key + end)) for row in rows for end in CI):
        return [row[key + CI[0]] for row in rows], [row[key + CI[1]] for row in rows]
    return None, None


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: tree}
