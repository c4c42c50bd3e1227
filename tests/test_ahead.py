"""Samples generated one step ahead (`iterdpo.rounds.ahead`): which round takes them, when they are dropped, and
how they survive a resume, byte for byte."""

import pytest

from iterdpo.config.loading import load_config
from iterdpo.config.schema import ConfigError
from iterdpo.core.records import Sample
from iterdpo.rounds.ahead import Drawn, SamplesAhead

SAMPLES = [Sample(0, "hi", [1, 2], [3, 4, 5], "a b c", [-0.1, -2.5e-07, -13.75], True),
           Sample(0, "hi", [1, 2], [], "", [], False, [{"role": "user", "content": "hi"}])]


def _started(ahead: SamplesAhead, index: int = 3, n: int = 2, policy_hash: str = "h1") -> SamplesAhead:
    ahead.start(index, n, "calls", policy_round=1, policy_hash=policy_hash)
    ahead.wait(lambda calls: SAMPLES if calls == "calls" else None)
    return ahead


def test_the_next_round_takes_them_once_with_their_policy_version():
    ahead = _started(SamplesAhead())
    drawn = ahead.take(3, 2)
    assert drawn.samples == SAMPLES and drawn.policy_round == 1 and drawn.policy_hash == "h1" and drawn.ahead
    assert drawn.staleness(start_hash="h2") == 1  # the round before trained h1 into h2
    assert drawn.staleness(start_hash="h1") == 0  # it diverged, or a rollback went back to h1
    assert ahead.take(3, 2) is None  # taken


def test_another_round_or_another_sample_count_samples_again():
    assert _started(SamplesAhead()).take(4, 2) is None
    assert _started(SamplesAhead()).take(3, 4) is None  # an adaptive schedule changed samples_per_prompt


def test_an_engine_death_while_generating_drops_them():
    ahead = SamplesAhead()
    ahead.start(3, 2, "calls", policy_round=1, policy_hash="h1")

    def died(_calls):
        raise RuntimeError("engine died")

    with pytest.raises(RuntimeError):
        ahead.wait(died)
    ahead.wait(lambda _calls: SAMPLES)  # the phase again, after the restart: the weights that drew them are gone
    assert not ahead.generating and ahead.take(3, 2) is None


def test_a_rollback_keeps_them_only_when_the_weights_gone_back_to_drew_them():
    kept = _started(SamplesAhead(), policy_hash="anchor")
    kept.keep_if_drawn_by("anchor")
    assert kept.take(3, 2) is not None
    dropped = _started(SamplesAhead(), policy_hash="rolled-back")
    dropped.keep_if_drawn_by("anchor")
    assert dropped.take(3, 2) is None


def test_saved_and_loaded_they_are_the_same_samples(tmp_path):
    path = tmp_path / "round_002" / "next_samples.json"
    _started(SamplesAhead()).save(path)
    resumed = SamplesAhead()
    resumed.load(path, 3)
    assert resumed.take(3, 2) == Drawn(SAMPLES, 1, "h1", 2, ahead=True)
    nothing = SamplesAhead()
    nothing.load(tmp_path / "absent.json", 3)  # the round before generated nothing ahead (a rollback dropped them)
    assert nothing.take(3, 2) is None


def test_a_round_done_again_without_samples_ahead_leaves_no_file_of_its_first_try(tmp_path):
    path = tmp_path / "next_samples.json"
    _started(SamplesAhead()).save(path)  # the first try at the round, killed before its row
    dropped = _started(SamplesAhead(), policy_hash="rolled-back")
    dropped.keep_if_drawn_by("anchor")
    dropped.save(path)  # the round done again: its samples ahead were dropped
    assert not path.exists()


@pytest.mark.parametrize("other", ["run.sampler=pi0", "sync.score_on_engine=false", "round.loss=auxdpo"])
def test_async_generation_with_what_needs_the_round_start_weights_or_has_none_ahead_is_refused(other):
    with pytest.raises(ConfigError, match=r"^run.async_generation: .*expected false with it, got true$"):
        load_config("configs/smoke.yaml", ["run.async_generation=true", other, "round.epochs=2"])
