"""Which schedule? The README section's tables from the runs of its study: each schedule's last evaluation with 95%
intervals, the seed-to-seed spread, and each schedule against the iterative one of the same seed, response by
response on the same held-out prompts.

    .venv/bin/python benchmarks/which_schedule.py runs/schedule            # the folder with NAME-sSEED run dirs

The runs (`benchmarks/which_schedule/study.sh` makes them) are named `<schedule>-s<seed>`;
`times.tsv` beside them holds each run's wall time (schedule, seed, exit code, seconds, load before, load after).
Nothing here runs a model: it reads `metrics.jsonl` and `round_NNN/eval_samples` (`iterdpo.rundir.runs`).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402,F401  (puts the project root on sys.path)

from iterdpo.evaluation.intervals import paired_change, win  # noqa: E402
from iterdpo.rundir.pages import with_interval  # noqa: E402
from iterdpo.rundir.runs import eval_samples, load_report  # noqa: E402

SCHEDULES = ("offline", "iterative", "online", "online_async", "fixed", "ema")
LABELS = {"offline": "offline (every round from pi0)", "iterative": "iterative, reference refreshed (default)",
          "online": "online (one step a round)", "online_async": "online, one step ahead",
          "fixed": "iterative, reference fixed at pi0", "ema": "iterative, EMA reference"}
COLUMNS = (("held-out reward", "eval/reward_mean"), ("win rate vs pi0", "eval/win_rate_vs_pi0"),
           ("KL to pi0", "kl/policy_to_pi0_k3"), ("refusal (harmful)", "safety/refusal_rate"),
           ("toxicity", "safety/toxicity_rate"), ("over-refusal (benign)", "safety/over_refusal_rate"))
BASE = "iterative"


def last_evaluated(rows: list[dict]) -> dict:
    return [row for row in rows if "eval/reward_mean" in row][-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    times = {}
    if (args.folder / "times.tsv").is_file():
        for row in csv.reader((args.folder / "times.tsv").read_text().splitlines(), delimiter="\t"):
            if len(row) == 6 and row[2] == "0":
                times[row[0], int(row[1])] = (float(row[3]), row[4], row[5])
    # the runs that finished (times.tsv has their wall time and exit code 0)
    runs = {(name, seed): args.folder / f"{name}-s{seed}" for name in SCHEDULES for seed in (0, 1)
            if (name, seed) in times}
    reports = {key: load_report(folder) for key, folder in runs.items()}
    finals = {key: last_evaluated(report.rows) for key, report in reports.items()}

    table = []
    for (name, seed), row in finals.items():
        wall = times.get((name, seed))
        table.append([LABELS[name], seed, row["round"], *(with_interval(row, key) for _, key in COLUMNS),
                      f"{wall[0] / 60:.1f} (load {wall[1]} → {wall[2]})" if wall else "–"])
    print("| schedule | seed | round | " + " | ".join(label for label, _ in COLUMNS) + " | wall minutes |")
    print("|---" * (len(COLUMNS) + 4) + "|")
    for line in table:
        print("| " + " | ".join(str(cell) for cell in line) + " |")

    print("\nseed to seed: |seed 0 - seed 1| beside the mean half-width of the two 95% intervals")
    print("| schedule | " + " | ".join(label for label, _ in COLUMNS[:3]) + " | wall minutes |")
    print("|---" * 5 + "|")
    for name in SCHEDULES:
        if (name, 0) in finals and (name, 1) in finals:
            a, b = finals[name, 0], finals[name, 1]
            cells = [f"{abs(a[key] - b[key]):.3g} vs ±{half_width(a, b, key):.3g}" for _, key in COLUMNS[:3]]
            print(f"| {LABELS[name]} | " + " | ".join(cells) + f" | {times[name, 0][0] / 60:.1f}, "
                  f"{times[name, 1][0] / 60:.1f} |")

    print(f"\nagainst {LABELS[BASE]}, same seed, response by response on the same held-out prompts:")
    print("| schedule | seed | reward difference [95%] | win rate [95%] | beyond noise |")
    print("|---|---|---|---|---|")
    for (name, seed), row in finals.items():
        if name == BASE or (BASE, seed) not in finals:
            continue
        base = eval_samples(runs[BASE, seed], [finals[BASE, seed]["round"]])[finals[BASE, seed]["round"]]
        other = eval_samples(runs[name, seed], [row["round"]])[row["round"]]
        assert [s["prompt"] for s in base] == [s["prompt"] for s in other], (name, seed)
        now, before, prompts = [s["score"] for s in other], [s["score"] for s in base], [s["prompt_index"]
                                                                                        for s in other]
        change = {**paired_change("difference", now, before, prompts),
                  **paired_change("wins", now, before, prompts, win)}
        beyond = change["difference_ci_low"] > 0 or change["difference_ci_high"] < 0
        print(f"| {LABELS[name]} | {seed} | {with_interval(change, 'difference')} | {with_interval(change, 'wins')} "
              f"| {'yes' if beyond else 'no'} |")
    return 0


def half_width(a: dict, b: dict, key: str) -> float:
    return statistics.fmean((row[key + "_ci_high"] - row[key + "_ci_low"]) / 2 for row in (a, b))


if __name__ == "__main__":
    sys.exit(main())
