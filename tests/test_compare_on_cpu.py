"""`iterdpo compare` on real run directories: the smoke configuration trained with two losses."""

import json

import datasets
import pytest

from iterdpo.cli import main
from iterdpo.config import load_config
from iterdpo.orchestrator import Orchestrator

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
    # ipo against dpo at round 2, response by response, computed here from the saved held-out responses
    dpo = datasets.load_from_disk(str(two_runs / "dpo" / "round_002" / "eval_samples"))
    ipo = datasets.load_from_disk(str(two_runs / "ipo" / "round_002" / "eval_samples"))
    assert dpo["prompt"] == ipo["prompt"]
    differences = [b - a for a, b in zip(dpo["score"], ipo["score"])]
    wins = [1.0 if b > a else 0.5 if b == a else 0.0 for a, b in zip(dpo["score"], ipo["score"])]
    assert "| run | round | eval/reward_mean minus dpo's | win rate against dpo | responses |" in markdown
    paired = next(line for line in markdown.splitlines()
                  if line.startswith("| ipo | 2 | ") and line.endswith(f"| {len(wins)} |"))
    cells = [cell.strip() for cell in paired.strip("|").split("|")]
    for cell, values in ((cells[2], differences), (cells[3], wins)):
        value, low, high = (float(x) for x in cell.replace("[", "").replace("]", "").replace(",", "").split())
        assert value == pytest.approx(sum(values) / len(values), rel=1e-3, abs=1e-4)
        assert low <= value <= high and low < high  # the two losses' responses differ, so the interval has width
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
