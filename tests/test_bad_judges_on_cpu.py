"""Bad judge outputs, all-tie rounds and over-long prompts, through the real actors: a counted skip or a clear
error, never a hang."""

import math

import pytest

from iterdpo.config.schema import ConfigError
from iterdpo.config.loading import load_config
from iterdpo.rounds.orchestrator import Orchestrator

pytestmark = pytest.mark.slow


def _run(tmp_path, *overrides):
    cfg = load_config("configs/smoke.yaml", ["run.rounds=1", "safety.harmful_prompts=0",
                                             "safety.toxicity_prompts=0", "safety.benign_prompts=0", *overrides])
    orchestrator = Orchestrator(cfg, tmp_path / "run")
    try:
        return orchestrator.run()
    finally:
        orchestrator.shutdown()


def _judge(function: str) -> str:
    return f"judge.scorers=[{{kind: function, options: {{path: 'tests.battery_judges:{function}'}}, retries: 0}}]"


def test_nan_scores_are_dropped_and_counted(ray_session, tmp_path):
    row = _run(tmp_path, _judge("nan_for_every_third"))[1]
    assert row["judge/dropped"] == math.ceil(row["samples/samples"] / 3)
    assert row["pairs/unscored"] == row["judge/dropped"]
    assert row["pairs/count"] > 0


def test_a_round_where_every_pair_ties_is_a_counted_skip(ray_session, tmp_path):
    row = _run(tmp_path, _judge("constant"))[1]
    assert row["pairs/count"] == 0 and row["pairs/ties_dropped"] == 8
    assert row["train/steps"] == 0
    assert row["policy/end_hash"] == row["policy/start_hash"]  # nothing to learn from: the policy is unchanged


@pytest.mark.parametrize(("function", "words"), [("wrong_length", "returned 9 scores for 8 responses"),
                                                 ("always_raises", "judge backend unavailable")])
def test_a_judge_that_fails_a_whole_batch_stops_the_round_with_a_clear_error(ray_session, tmp_path, function, words):
    from iterdpo.core.errors import ActorFailure

    with pytest.raises(ActorFailure) as failure:
        _run(tmp_path, _judge(function))
    message = str(failure.value.cause)
    assert "function" in message and words in message.replace("\n", " ")
    assert (failure.value.actor, failure.value.phase) == ("judge", "evaluate") and "\n" not in str(failure.value)


def test_prompts_longer_than_the_context_are_refused_when_too_many(ray_session, tmp_path):
    """Every prompt too long for the context: past data.max_skipped_share, refused before any actor starts (a few
    long ones among many are skipped and counted: tests/test_long_prompts.py)."""
    prompts = tmp_path / "long.txt"
    prompts.write_text("\n".join(f"prompt {i} " + "word " * 400 for i in range(10)))
    with pytest.raises(ConfigError, match=r"data.prompts: \d+ of the \d+ prompts looked at \(100.0%\) leave no room"):
        _run(tmp_path, f"data.prompts={prompts}")
