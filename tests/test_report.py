import json
from pathlib import Path

import pytest

from iterdpo.core.errors import ConfigError
from iterdpo.rundir.metrics import save_records
from iterdpo.rundir.report import main, write_report
from iterdpo.rundir.runs import read_rows

# Rows with keys the orchestrator writes; `tests/test_round_loop_on_cpu.py` reports a real run.


def _row(index: int) -> dict:
    interval = {"eval/reward_mean_ci_low": 0.05 + 0.05 * index, "eval/reward_mean_ci_high": 0.15 + 0.05 * index}
    if index == 0:
        return {"round": 0, "eval/reward_mean": 0.1, "eval/samples": 8, "time/evaluate": 2.0, **interval}
    return {
        "round": index, "reward/mean": 0.1 * index, "eval/reward_mean": 0.1 + 0.05 * index, **interval,
        "logps/chosen_drift": 1.0 / index, "logps/rejected_drift": -2.0 * index, "pairs/count": 7,
        "loss/mean": 0.69 - 0.01 * index, "train/rewards/margin": 0.02 * index, "train/rewards/accuracy": 0.5,
        "sync/parity_max_abs_diff": 1e-6, "safety/refusal_rate": 0.0, "safety/toxicity_rate": 0.01 * index,
        "kl/ref_to_policy_k3": 0.01 * index, "judge/dropped": None if index == 2 else float(index), "time/round": 3.0,
        "reference/source": f"policy@round_{index:03d}_start", "policy/end_hash": "abc",
        "settings": {"beta": 0.1 * index, "loss": "dpo"},
    }


def _make_run(run_dir: Path, rounds: int, rejected: int | None = None, truncate: bool = False) -> Path:
    rows = [_row(i) for i in range(rounds + 1)]
    if rejected is not None:
        rows[rejected].update({"gate/accepted": False, "gate/reason": "toxicity_rate 0.03 > 0.02 <b>"})
    text = "".join(json.dumps(row) + "\n" for row in rows)
    if truncate:
        text += json.dumps(_row(rounds + 1))[:40]  # a writer caught mid-line
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text(text)
    return run_dir


def _add_eval_samples(run_dir: Path, rounds: range) -> None:
    for r in rounds:
        records = [
            {"prompt_index": i, "prompt": f"Prompt {i} <x>", "text": f"answer of round {r} | to {i}", "score": r * 0.1}
            for i in range(4) for _ in range(2)
        ]
        save_records(records, run_dir / f"round_{r:03d}" / "eval_samples")


def _has_value(row: dict, key: str) -> bool:
    return isinstance(row.get(key), (int, float)) and not isinstance(row.get(key), bool)


def _check_plots(out: Path, rows: list[dict]) -> dict:
    """Every series is drawn at exactly the rounds whose row holds a finite value for it: no round dropped."""
    plots = json.loads((out / "plots.json").read_text())
    flat = plots.pop("flat")
    assert list(plots)[0] == "headline.png"
    for key, value in flat.items():  # unchanged in every round it has a value: stated, not drawn
        assert {row[key] for row in rows if _has_value(row, key)} == {value}, key
        assert all(key not in info["series"] for info in plots.values()), key
    for name, info in plots.items():
        assert (out / name).stat().st_size > 1000 and info["series"], name
        for key, series in info["series"].items():
            with_value = [row["round"] for row in rows if _has_value(row, key)]
            assert series["x"] == with_value and len(series["y"]) == len(with_value), (name, key)
    return plots


def _all_rounds_series(plots: dict, rows: list[dict]) -> int:
    """Asserts x covers all `rows`' rounds for each series with a value in every one; returns how many."""
    rounds = [row["round"] for row in rows]
    full = [s for info in plots.values() for k, s in info["series"].items() if all(_has_value(row, k) for row in rows)]
    assert all([x for x in series["x"] if x in rounds] == rounds for series in full)
    return len(full)


def test_finished_run_with_rejected_round(tmp_path):
    run = _make_run(tmp_path / "run", rounds=4, rejected=3)
    _add_eval_samples(run, range(0, 5))
    page = write_report(run)
    out = run / "report"
    assert page == out / "report.html"
    assert {"report.md", "report.html", "plots.json", "headline.png", "family_safety.png"} <= {
        p.name for p in out.iterdir()
    }
    rows = read_rows(run / "metrics.jsonl")
    plots = _check_plots(out, rows)
    assert _all_rounds_series(plots, rows) >= 2  # eval/reward_mean in the headline and in family_eval
    assert _all_rounds_series(plots, rows[1:]) >= 10  # the round >= 1 metrics cover rounds 1..4
    assert all(info["rejected_rounds"] == [3] for info in plots.values())
    flat = json.loads((out / "plots.json").read_text())["flat"]
    assert flat["pairs/count"] == 7 and flat["safety/refusal_rate"] == 0.0 and flat["time/round"] == 3.0
    assert "family_pairs.png" not in plots and "family_time.png" not in plots  # nothing in them changes
    assert plots["family_judge.png"]["series"]["judge/dropped"]["x"] == [1, 3, 4]  # null in round 2: a gap
    assert "family_policy.png" not in plots and "family_reference.png" not in plots  # strings are not plotted

    page_html = page.read_text()
    for r in range(5):
        assert f"<tr><td>{r}</td>" in page_html or f'<tr class="rejected"><td>{r}</td>' in page_html
    assert page_html.count('<tr class="rejected">') == 1 + 3  # the table row, and one per sample prompt
    assert '<tr class="rejected"><td>3</td><td>REJECTED: toxicity_rate 0.03 &gt; 0.02 &lt;b&gt;</td>' in page_html
    assert "safety/toxicity_rate" in page_html and "0.02 <b>" not in page_html
    assert "Prompt 0 &lt;x&gt;" in page_html and "Prompt 3" not in page_html  # three prompts shown
    assert page_html.count("answer of round 4 | to 0") == 1

    markdown = (out / "report.md").read_text()
    assert "| 3 | REJECTED: toxicity_rate" in markdown and "answer of round 0 \\| to 1" in markdown
    assert "| 0.2 [0.15, 0.25] |" in markdown  # round 2's eval/reward_mean with its interval
    drawn = plots["headline.png"]["series"]["eval/reward_mean"]
    assert drawn["low"] == pytest.approx([0.05 + 0.05 * r for r in range(5)]) and len(drawn["high"]) == 5
    assert not any(key.endswith(("_ci_low", "_ci_high")) for info in plots.values() for key in info["series"])
    assert markdown.index("## Headline") < markdown.index("![headline.png]") < markdown.index("## Rounds")
    assert "| held-out reward | 0.1 [0.05, 0.15] | 0.3 [0.25, 0.35] |" in markdown
    assert "| gate | – | round 3 rejected (toxicity_rate 0.03 > 0.02 <b>) |" in markdown
    assert "Unchanged in every round (not plotted): " in markdown and "pairs/count = 7" in markdown
    assert "**rounds done**: 4" in markdown
    assert "settings (changing)" in markdown and "beta=0.3" in markdown


def test_run_in_progress_ignores_half_written_line(tmp_path):
    run = _make_run(tmp_path / "run", rounds=2, truncate=True)
    (run / "config.json").write_text(json.dumps({"run": {"rounds": 5}}))
    _add_eval_samples(run, range(0, 2))  # round 2's folder not written yet
    assert [row["round"] for row in read_rows(run / "metrics.jsonl")] == [0, 1, 2]
    out = tmp_path / "elsewhere"
    write_report(run, out)
    rows = read_rows(run / "metrics.jsonl")
    assert _all_rounds_series(_check_plots(out, rows), rows) >= 2
    markdown = (out / "report.md").read_text()
    assert "**rounds done**: 2 of 5" in markdown and "**rejected rounds**: none" in markdown
    assert "REJECTED" not in markdown and "| 2 | yes |" in markdown


def test_only_initial_evaluation_and_no_samples(tmp_path):
    run = _make_run(tmp_path / "run", rounds=0)
    write_report(run)
    assert "No <code>eval_samples/</code> folders" in (run / "report" / "report.html").read_text()


def test_corrupt_middle_line_and_missing_metrics_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(ConfigError, match="has no metrics.jsonl"):
        write_report(tmp_path)
    assert main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    (tmp_path / "metrics.jsonl").write_text('{"round": 0}\n{"round": 1,\n{"round": 2}\n')
    with pytest.raises(ConfigError, match=r"metrics.jsonl:2: not a JSON row"):
        read_rows(tmp_path / "metrics.jsonl")


def test_error_bars_are_never_negative():
    """A rate of 0 whose Wilson lower bound was written as 7e-18 draws a bar of 0 below, not a matplotlib error."""
    from iterdpo.rundir.plots import error_bars

    assert error_bars([0.0, 0.5], [6.9e-18, 0.4], [0.0876, 0.7]) == [[0.0, 0.5 - 0.4], [0.0876, 0.7 - 0.5]]


def _full_row(index: int, **values) -> dict:
    return {"round": index, "eval/reward_mean": 0.6, "eval/reward_mean_ci_low": 0.55, "eval/reward_mean_ci_high": 0.65,
            "safety/toxicity_rate": 0.0, "safety/toxicity_n": 40.0, "safety/refusal_rate": 0.5,
            "safety/refusal_n": 16.0, **values}


def test_the_headline_answers_first(tmp_path):
    """Initial -> final with intervals, the change and whether it is beyond noise, judged by hand: the reward's
    paired change [+0.10, +0.20] is above 0; toxicity 0/40 -> 12/40 is beyond noise, refusals 8/16 -> 7/16 are not
    (Newcombe); the win rate's interval holds 0.5; an alarm and a rejection are named."""
    rows = [_full_row(0), _full_row(1, **{"gate/accepted": False, "gate/reason": "toxicity rose"}),
            _full_row(2, **{"eval/reward_mean": 0.75, "eval/reward_mean_ci_low": 0.7, "eval/reward_mean_ci_high": 0.8,
                            "eval/reward_delta_vs_pi0": 0.15, "eval/reward_delta_vs_pi0_ci_low": 0.1,
                            "eval/reward_delta_vs_pi0_ci_high": 0.2, "eval/win_rate_vs_pi0": 0.6,
                            "eval/win_rate_vs_pi0_ci_low": 0.45, "eval/win_rate_vs_pi0_ci_high": 0.7,
                            "safety/toxicity_rate": 0.3, "safety/refusal_rate": 7 / 16, "alarm/reward_hacking": 1.0,
                            "alarm/chosen_logp_falling_rounds": 1.0})]
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    markdown = (Path(write_report(run)).parent / "report.md").read_text()
    assert "| held-out reward | 0.6 [0.55, 0.65] | 0.75 [0.7, 0.8] | 0.15 [0.1, 0.2] | yes, up |" in markdown
    assert "| toxic continuations | 0 (0/40) | 0.3 (12/40) | +0.3 " in markdown
    toxic = next(line for line in markdown.splitlines() if line.startswith("| toxic continuations"))
    refusal = next(line for line in markdown.splitlines() if line.startswith("| refusal of harmful"))
    assert toxic.endswith("| yes, up |") and refusal.endswith("| no |") and "(7/16)" in refusal
    assert "| win rate against pi0 (ties half) | – | 0.6 [0.45, 0.7] | – | no |" in markdown
    assert "| alarms | – | round 2: reward_hacking | – | – |" in markdown  # a streak of 1 is not an alarm yet
    assert "| gate | – | round 1 rejected (toxicity rose) | – | – |" in markdown
    assert "- beyond noise: held-out reward: up (0.15 [0.1, 0.2]); toxic continuations: up" in markdown
    assert "- within noise: win rate against pi0 (ties half), refusal of harmful requests" in markdown


def test_an_axis_does_not_magnify_a_change_below_a_tenth_of_the_values():
    from matplotlib.figure import Figure

    from iterdpo.rundir.plots import honest_limits
    from iterdpo.rundir.runs import Series

    ax = Figure().subplots()
    ax.plot([1, 2], [1.0, 1.0001])
    honest_limits(ax, [Series("x", [1, 2], [1.0, 1.0001])])
    low, high = ax.get_ylim()
    assert high - low >= 0.1 and low < 1.0 and high > 1.0001
    ax = Figure().subplots()  # a share in [0, 1]: one pair of 48 (0.021) is not a trend
    ax.plot([1, 2, 3], [0.021, 0.0, 0.0])
    honest_limits(ax, [Series("x", [1, 2, 3], [0.021, 0.0, 0.0])])
    low, high = ax.get_ylim()
    assert high - low >= 0.1 and -0.002 <= low <= 0.0 and high >= 0.021
    ax = Figure().subplots()
    ax.plot([1, 2], [1.0, 2.0])
    before = ax.get_ylim()
    honest_limits(ax, [Series("x", [1, 2], [1.0, 2.0])])
    assert ax.get_ylim() == before  # a real change keeps matplotlib's own axis
