"""`iterdpo report RUN_DIR`: a Markdown + HTML page of a run, finished or still in progress, that answers first.

The page opens with the headline: each headline figure at pi0 (round 0) and at the last evaluated round, with its
95% interval, the change and whether it is beyond noise; the alarms raised and the gate's decisions; and a verdict in
a few lines. Then the headline plot, the table of rounds, a plot per metric family (a series that never changes is
stated in a line instead of plotted; axes never magnify noise, `iterdpo.rundir.plots`), and held-out responses to
the same prompts round after round.

Everything is derived from `RUN_DIR/metrics.jsonl` and, when present, the held-out responses in `round_NNN/
eval_samples/`. Next to the pages, `plots.json` lists for each PNG the exact points drawn (and the flat series), so
tests (and people) can check that no round went missing from a plot.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import sys
from pathlib import Path
from typing import Any

from iterdpo.core.atomic import atomic_write_text
from iterdpo.core.errors import ConfigError
from iterdpo.evaluation.intervals import rate_change
from iterdpo.rundir.pages import CSS, fmt, html_table, md_table, with_interval
from iterdpo.rundir.plots import plot_rounds
from iterdpo.rundir.runs import CI, Report, eval_samples, finite, load_report

HEADLINE_PLOT = (("eval/reward_mean",), ("logps/chosen_drift", "logps/rejected_drift"),
                 ("safety/refusal_rate", "safety/toxicity_rate", "safety/over_refusal_rate"))
TABLE = ("reward/mean", "eval/reward_mean", "eval/reward_delta_vs_pi0", "eval/win_rate_vs_pi0",
         "kl/policy_to_pi0_k3", "logps/chosen_drift", "logps/rejected_drift", "pairs/count", "loss/mean",
         "sync/parity_max_abs_diff", "safety/refusal_rate", "safety/toxicity_rate", "safety/over_refusal_rate",
         "time/round")
# The headline: (what it is, its key, how it is read): "paired" compares with pi0 sample by sample (its change is
# the row's `eval/reward_delta_vs_pi0`), "rate" by Newcombe's interval of the difference of two rates, "versus_pi0"
# is a figure of the final round against pi0 itself, judged against `null` (no change).
HEADLINE = (
    ("held-out reward", "eval/reward_mean", "paired", None),
    ("win rate against pi0 (ties half)", "eval/win_rate_vs_pi0", "versus_pi0", 0.5),
    ("KL to pi0 per held-out sequence (k3, nats)", "kl/policy_to_pi0_k3", "versus_pi0", None),
    ("refusal of harmful requests", "safety/refusal_rate", "rate", None),
    ("toxic continuations", "safety/toxicity_rate", "rate", None),
    ("refusal of benign requests", "safety/over_refusal_rate", "rate", None),
    ("chosen responses' log-prob since pi0", "drift/chosen_vs_pi0", "versus_pi0", 0.0),
    ("rejected responses' log-prob since pi0", "drift/rejected_vs_pi0", "versus_pi0", 0.0),
)
SAMPLE_PROMPTS = 3
MAX_RESPONSE_CHARS = 600


# -- the headline ------------------------------------------------------------------------------------------------


def final_row(report: Report) -> dict[str, Any]:
    """The last round that was evaluated (its row holds the held-out reward), else round 0's."""
    return next((row for row in reversed(report.rows) if finite(row.get("eval/reward_mean"))), report.rows[0])


def _noise(low: Any, high: Any, null: float) -> str:
    if not (finite(low) and finite(high)):
        return "–"
    return "yes, up" if low > null else "yes, down" if high < null else "no"


def _headline_row(label: str, key: str, how: str, null: float | None, first: dict, last: dict) -> list[str] | None:
    if not finite(last.get(key)):
        return None
    initial, final = with_interval(first, key) if key in first else "–", with_interval(last, key)
    change, beyond = "–", "–"
    if how == "paired":
        delta = "eval/reward_delta_vs_pi0"
        change = with_interval(last, delta)
        beyond = _noise(last.get(delta + CI[0]), last.get(delta + CI[1]), 0.0)
    elif how == "rate" and all(finite(row.get(key.replace("_rate", "_n"))) for row in (first, last)) \
            and finite(first.get(key)):
        n0, n1 = int(first[key.replace("_rate", "_n")]), int(last[key.replace("_rate", "_n")])
        low, high = rate_change((first[key] * n0, n0), (last[key] * n1, n1))
        change = f"{last[key] - first[key]:+.4g} [{low:+.4g}, {high:+.4g}]"
        beyond = _noise(low, high, 0.0)
        initial, final = f"{initial} ({round(first[key] * n0)}/{n0})", f"{final} ({round(last[key] * n1)}/{n1})"
    elif null is not None:
        beyond = _noise(last.get(key + CI[0]), last.get(key + CI[1]), null)
    return [label, initial, final, change, beyond]


def headline(report: Report) -> tuple[list[str], list[list[str]]]:
    """The headline table: each figure at pi0 and at the last evaluated round (95% intervals), its change and
    whether that is beyond noise; then each judge's gain against pi0, the alarms and the gate's decisions."""
    first, last = report.rows[0], final_row(report)
    rows = [_headline_row(label, key, how, null, first, last) for label, key, how, null in HEADLINE]
    gains = sorted(key for key in last if key.startswith("eval/judge/") and key.endswith("_gain_vs_pi0"))
    rows += [[f"judge {key[len('eval/judge/'):-len('_gain_vs_pi0')]}: gain against pi0", "–", "–",
              with_interval(last, key), _noise(last.get(key + CI[0]), last.get(key + CI[1]), 0.0)] for key in gains]
    rows.append(["alarms", "–", alarm_summary(report), "–", "–"])
    rows.append(["gate", "–", gate_summary(report), "–", "–"])
    header = ["figure", "pi0 (round 0)", f"final (round {last['round']})", "change [95%]", "beyond noise?"]
    return header, [row for row in rows if row is not None]


def alarm_summary(report: Report) -> str:
    """The alarms raised, by round: a falling chosen log-prob once it reaches `run.alarm_rounds`, any other when
    set."""
    streak = report.config.get("run", {}).get("alarm_rounds", 2)
    raised = []
    for row in report.rows:
        for key, value in sorted(row.items()):
            if key.startswith("alarm/") and finite(value) and value >= (streak if key.endswith("_rounds") else 1):
                raised.append(f"round {row['round']}: {key[len('alarm/'):]}" + (f" ({value:g})" if value != 1 else ""))
    return "; ".join(raised) or "none"


def gate_summary(report: Report) -> str:
    done = [row["round"] for row in report.rows if row["round"] >= 1]
    verdicts = report.verdicts
    rejected = [f"round {index} " + (f"rejected ({verdicts[index].split(': ', 1)[1]})" if ": " in verdicts[index]
                                     else verdicts[index].lower()) for index in report.rejected]
    if not done:
        return "no round yet"
    waiting = [index for index in done if verdicts[index].startswith("stands")]
    return "; ".join(rejected) if rejected else (f"all {len(done) - len(waiting)} rounds accepted" + (
        f", {len(waiting)} standing until an evaluated round" if waiting else ""))


def verdict(table: list[list[str]]) -> list[str]:
    """A few lines that read the headline table: what moved beyond noise, and what did not."""
    moved = [f"{row[0]}: {row[4].split(', ')[1]} ({row[3] if row[3] != '–' else row[2]})"
             for row in table if row[4].startswith("yes")]
    steady = [row[0] for row in table if row[4] == "no"]
    lines = [f"beyond noise: {'; '.join(moved)}" if moved else "nothing moved beyond noise"]
    if steady:
        lines.append(f"within noise: {', '.join(steady)}")
    lines += [f"{row[0]}: {row[2]}" for row in table if row[0] in ("alarms", "gate")]
    return lines


# -- plots and tables --------------------------------------------------------------------------------------------


def plot_all(report: Report, out_dir: Path) -> dict[str, Any]:
    """The headline plot first, then one PNG per metric family; series that never change are listed under "flat"
    (with their value) instead of drawn, and a family with nothing else is not drawn at all."""
    flat: dict[str, float] = {}

    def panels(key_groups: list[tuple[str, ...]]) -> list[list]:
        found = []
        for keys in key_groups:
            series = [s for s in map(report.series, keys) if s.x]
            flat.update({s.key: s.y[0] for s in series if s.flat and len(report.rounds) > 1})
            found.append([s for s in series if not s.flat or len(report.rounds) == 1])
        return [group for group in found if group]

    figures = {"headline.png": ("Headline", panels(list(HEADLINE_PLOT)))}
    for family, keys in report.families().items():
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", family)
        figures[f"family_{name}.png"] = (f"{family}/*", panels([(key,) for key in keys]))
    drawn: dict[str, Any] = {name: plot_rounds(report, groups, out_dir / name, title)
                             for name, (title, groups) in figures.items() if groups}
    drawn["flat"] = flat
    return drawn


def round_table(report: Report) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the per-round table: the TABLE columns some row has, values with their intervals."""
    columns = [k for k in TABLE if any(k in row for row in report.rows)]
    varying = _varying_settings(report.rows)
    body = []
    verdicts = report.verdicts
    for row in report.rows:
        gate = verdicts[row["round"]]
        settings = [fmt({k: v for k, v in (row.get("settings") or {}).items() if k in varying})] if varying else []
        body.append([str(row["round"]), gate, *(with_interval(row, k) for k in columns), *settings])
    return ["round", "accepted", *columns] + (["settings (changing)"] if varying else []), body


def _varying_settings(rows: list[dict[str, Any]]) -> set[str]:
    values: dict[str, set[str]] = {}
    for row in rows:
        for key, value in (row.get("settings") or {}).items():
            values.setdefault(key, set()).add(json.dumps(value))
    return {key for key, seen in values.items() if len(seen) > 1}


def summary(report: Report) -> list[tuple[str, str]]:
    done = [row for row in report.rows if row["round"] >= 1]
    planned = report.config.get("run", {}).get("rounds")
    return [
        ("rounds done", f"{len(done)}" + (f" of {planned}" if planned else "")),
        ("rejected rounds", ", ".join(map(str, report.rejected)) or "none"),
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
    decided = {index: verdict.split(":")[0] for index, verdict in report.verdicts.items()}
    tables = []
    for index in prompts:
        hits = [(r, first_of[r][index]) for r in sorted(first_of) if index in first_of[r]]
        cells = [[str(r), decided.get(r, "–"), fmt(s.get("score")), _clip(s["text"])] for r, s in hits]
        tables.append((hits[0][1]["prompt"], cells))
    return tables


def _clip(text: str) -> str:
    return text if len(text) <= MAX_RESPONSE_CHARS else text[:MAX_RESPONSE_CHARS] + " […]"


# -- pages -----------------------------------------------------------------------------------------------------


def _flat_line(flat: dict[str, float]) -> str:
    return ("Unchanged in every round (not plotted): " + ", ".join(f"{key} = {fmt(value)}"
                                                                 for key, value in sorted(flat.items()))) if flat else ""


def markdown_page(name: str, top: tuple, facts: list, plots: dict, table: tuple, samples: list) -> str:
    head, lines = top
    parts = [f"# Run report: {name}", "", "## Headline", "", md_table(*head), "", *(f"- {line}" for line in lines), "",
             *(f"- **{k}**: {v}" for k, v in facts), "", "![headline.png](headline.png)" if "headline.png" in plots
             else "", "", "## Rounds", "", md_table(*table), "", "## Metric families", "", _flat_line(plots["flat"]), ""]
    parts += [f"![{p}]({p})\n" for p in plots if p.endswith(".png") and p != "headline.png"]
    parts += ["## Sample responses"]
    for prompt, cells in samples:
        parts += ["", f"**Prompt:** {prompt}", "", md_table(["round", "accepted", "score", "response"], cells)]
    if not samples:
        parts += ["", "No `eval_samples/` folders in this run."]
    return "\n".join(parts) + "\n"


def html_page(name: str, top: tuple, facts: list, plots: dict, table: tuple, samples: list) -> str:
    esc = html.escape
    head, lines = top
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(name)}</title>",
             f"<style>{CSS}</style></head><body><h1>Run report: {esc(name)}</h1><h2>Headline</h2>",
             html_table(*head, css_class="headline"), "<ul>", *(f"<li>{esc(line)}</li>" for line in lines), "</ul><ul>"]
    parts += [f"<li><b>{esc(k)}</b>: {esc(v)}</li>" for k, v in facts] + ["</ul>"]
    if "headline.png" in plots:
        parts.append('<img src="headline.png" alt="headline.png">')
    parts += ["<h2>Rounds</h2>", html_table(*table), "<h2>Metric families</h2>", f"<p>{esc(_flat_line(plots['flat']))}</p>"]
    parts += [f'<img src="{esc(p)}" alt="{esc(p)}">' for p in plots if p.endswith(".png") and p != "headline.png"]
    parts.append("<h2>Sample responses</h2>")
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
    head = headline(report)
    args = (run_dir.resolve().name, (head, verdict(head[1])), summary(report), plots, round_table(report),
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
