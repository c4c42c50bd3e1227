"""`iterdpo compare` on real run directories: the smoke configuration trained with two losses."""

import json
import shutil

import datasets
import pytest

from iterdpo.cli import main
from iterdpo.config.loading import load_config
from iterdpo.rounds.orchestrator import Orchestrator

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_runs(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    for loss in ("dpo", "ipo"):
        orchestrator = Orchestrator(load_config("configs/smoke.yaml", [f"round.loss={loss}"]), root / loss)
        try:
            orchestrator.run()
        finally:
            orchestrator.shutdown()
    return root


def test_the_page_lays_the_runs_side_by_side(two_runs, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["compare", str(two_runs / "dpo"), str(two_runs / "ipo"), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out / "compare.html")
    markdown = (out / "compare.md").read_text()
    assert "| round.loss | dpo | ipo |" in markdown  # the one setting that differs
    assert "| data.prompts |" not in markdown  # settings both runs share are left out
    rows = [json.loads(line) for line in (two_runs / "ipo" / "metrics.jsonl").read_text().splitlines()]
    last = rows[-1]
    expected = (f"| ipo | 2 | {last['eval/reward_mean']:.4g} [{last['eval/reward_mean_ci_low']:.4g}, "
                f"{last['eval/reward_mean_ci_high']:.4g}] |")
    assert expected in markdown
    plots = json.loads((out / "plots.json").read_text())
    for label in ("dpo", "ipo"):
        frontier = plots["frontier.png"][label]
        assert frontier["rounds"] == [1, 2] and len(frontier["x"]) == 2  # pi0 has no KL to itself: rounds 1-2
        assert plots["compare.png"]["eval/reward_mean"][label]["x"] == [0, 1, 2]
    assert (out / "frontier.png").stat().st_size > 1000 and "<img src=\"frontier.png\"" in (out / "compare.html").read_text()


def test_a_folder_that_is_not_a_run_is_one_line(two_runs, tmp_path, capsys):
    assert main(["compare", str(two_runs / "dpo"), str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "is not a run directory" in lines[0]


def test_each_run_against_the_first_response_by_response(two_runs, tmp_path, capsys):
    """The paired table, computed here from the saved held-out responses. The smoke policies barely move in two
    rounds, so a third run is the ipo run with its round-2 scores raised by a known amount per prompt (0, 0.1, 0.2)."""
    shifted = tmp_path / "shifted"
    shutil.copytree(two_runs / "ipo", shifted)
    folder = shifted / "round_002" / "eval_samples"
    ipo = datasets.load_from_disk(str(two_runs / "ipo" / "round_002" / "eval_samples"))
    offsets = [0.1 * (prompt % 3) for prompt in ipo["prompt_index"]]
    shutil.rmtree(folder)
    ipo.map(lambda row, i: {"score": row["score"] + offsets[i]}, with_indices=True).save_to_disk(str(folder))
    out = tmp_path / "out"
    assert main(["compare", str(two_runs / "dpo"), str(two_runs / "ipo"), str(shifted), "--out", str(out)]) == 0
    markdown = (out / "compare.md").read_text()
    assert "| run | round | eval/reward_mean minus dpo's | win rate against dpo | responses |" in markdown
    dpo = datasets.load_from_disk(str(two_runs / "dpo" / "round_002" / "eval_samples"))
    assert dpo["prompt"] == ipo["prompt"]
    for label, scores in (("ipo", ipo["score"]), ("shifted", [a + b for a, b in zip(ipo["score"], offsets)])):
        differences = [b - a for a, b in zip(dpo["score"], scores)]
        wins = [1.0 if b > a else 0.5 if b == a else 0.0 for a, b in zip(dpo["score"], scores)]
        line = next(line for line in markdown.splitlines()
                    if line.startswith(f"| {label} | 2 | ") and line.endswith(f"| {len(wins)} |"))
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        parsed = {}
        for name, cell, values in (("difference", cells[2], differences), ("wins", cells[3], wins)):
            numbers = [float(x) for x in cell.replace("[", "").replace("]", "").replace(",", "").split()]
            assert numbers[0] == pytest.approx(sum(values) / len(values), rel=1e-3, abs=1e-4)
            assert len(numbers) == 3 and numbers[1] <= numbers[0] <= numbers[2]
            parsed[name] = numbers
        if label == "shifted":  # the offsets differ by prompt: the difference's interval over prompts has width
            value, low, high = parsed["difference"]
            assert low < high and value > 0.05


def test_runs_evaluated_at_different_rounds_pair_their_last_evaluations(two_runs, tmp_path):
    """A run of one evaluated round against one evaluated only at its second (`run.eval_every`, as 3 rounds of 48
    prompts against 18 of 8): no round after pi0's evaluated in both, so each run's last evaluation is paired."""
    short, late = tmp_path / "short", tmp_path / "late"
    shutil.copytree(two_runs / "dpo", short)
    shutil.copytree(two_runs / "ipo", late)
    lines = (short / "metrics.jsonl").read_text().splitlines()
    (short / "metrics.jsonl").write_text("\n".join(lines[:2]) + "\n")  # rounds 0 and 1
    rows = [json.loads(line) for line in (late / "metrics.jsonl").read_text().splitlines()]
    rows[1] = {key: value for key, value in rows[1].items() if not key.startswith(("eval/", "safety/"))}
    (late / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    shutil.rmtree(late / "round_001" / "eval_samples")
    out = tmp_path / "out"
    assert main(["compare", str(short), str(late), "--out", str(out)]) == 0
    line = next(line for line in (out / "compare.md").read_text().splitlines() if line.startswith("| late | "))
    first = datasets.load_from_disk(str(short / "round_001" / "eval_samples"))["score"]
    second = datasets.load_from_disk(str(late / "round_002" / "eval_samples"))["score"]
    cells = [cell.strip() for cell in line.strip("|").split("|")]
    assert cells[1] == "1 vs 2"
    assert float(cells[2].split()[0]) == pytest.approx(sum(b - a for a, b in zip(first, second)) / len(first),
                                                       rel=1e-3, abs=1e-4)
