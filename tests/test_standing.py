"""Which weights stand after a run's rows (`iterdpo.rounds.standing`), against histories worked out by hand."""

from iterdpo.config.schema import RunConfig
from iterdpo.rounds.standing import Standing, standing_after, standing_rounds


def _row(index, verdict, saved=True, reference="refresh"):
    return {"round": index, "gate/accepted": verdict, "policy/saved": saved, "policy/end_hash": f"h{index}",
            "settings": {"reference": reference}}


def test_cadence_of_evaluations_and_saves():
    run = RunConfig(rounds=7, eval_every=3, checkpoint_every=2)
    assert [i for i in range(1, 8) if run.evaluated(i)] == [3, 6, 7]  # and always the last round
    assert [i for i in range(1, 8) if run.saved(i)] == [2, 3, 4, 6, 7]
    every = RunConfig(rounds=3)
    assert all(every.evaluated(i) and every.saved(i) for i in (1, 2, 3))


def test_rows_of_an_every_round_run_resume_after_the_last_row():
    rows = [{"round": 0}, _row(1, True), _row(2, False), _row(3, True)]
    assert standing_after(rows, "pi0") == (3, Standing(3, "h3"), Standing(3, "h3"))
    # a rejected last round: its state is the anchor's, which is saved
    assert standing_after(rows[:3], "pi0") == (2, Standing(1, "h1"), Standing(1, "h1"))


def test_unsaved_standing_rounds_are_redone():
    # rounds 1, 2 stand (2 saved), 3 evaluated and accepted, 4 and 5 stand unsaved: resume after 3
    rows = [{"round": 0}, _row(1, None, saved=False), _row(2, None), _row(3, True), _row(4, None, saved=False),
            _row(5, None, saved=False)]
    assert standing_after(rows, "pi0") == (3, Standing(3, "h3"), Standing(3, "h3"))
    # after round 2 the run stands on round 2's saved weights while the anchor is still pi0
    assert standing_after(rows[:3], "pi0") == (2, Standing(2, "h2"), Standing(0, "pi0"))
    assert standing_after(rows[:2], "pi0") == (0, Standing(0, "pi0"), Standing(0, "pi0"))


def test_a_rejection_rolls_every_standing_round_back_to_the_anchor():
    rows = [{"round": 0}, _row(1, True), _row(2, None), _row(3, None), _row(4, False)]
    assert standing_after(rows, "pi0") == (4, Standing(1, "h1"), Standing(1, "h1"))


def test_the_ema_reference_follows_the_standing_rounds():
    rows = [{"round": 0}, _row(1, True, reference="ema"), _row(2, None, reference="ema"), _row(3, False)]
    # round 2's EMA was rolled back with it: the reference is round 1's again
    assert standing_after(rows, "pi0")[1] == Standing(1, "h1", ema_round=1)
    assert standing_after(rows[:3], "pi0")[1] == Standing(2, "h2", ema_round=2)


def test_rows_from_before_checkpoint_every_count_as_saved_and_accepted():
    rows = [{"round": 0}, {"round": 1, "gate/accepted": True, "policy/end_hash": "h1"},
            {"round": 2, "policy/end_hash": "h2"}]
    assert standing_after(rows, "pi0") == (2, Standing(2, "h2"), Standing(2, "h2"))


def test_a_report_gives_each_standing_round_the_verdict_that_covered_it():
    from iterdpo.rundir.runs import Report

    rows = [{"round": 0}, _row(1, None), _row(2, True), _row(3, None), _row(4, None),
            {**_row(5, False), "gate/reason": "toxicity rose"}, _row(6, None)]
    report = Report(rows, {})
    assert report.verdicts == {0: "yes", 1: "yes (with round 2)", 2: "yes", 3: "ROLLED BACK (round 5 rejected)",
                               4: "ROLLED BACK (round 5 rejected)", 5: "REJECTED: toxicity rose",
                               6: "stands (no evaluated round since)"}
    assert report.rejected == [3, 4, 5]


def test_a_rejection_rolls_back_only_the_rounds_standing_since_the_last_verdict():
    # round 2 was rejected (nothing stood on it), rounds 3 and 4 stand: a rejection at round 5 undoes 3 and 4
    rows = [{"round": 0}, _row(1, True), _row(2, False), _row(3, None), _row(4, None)]
    assert standing_rounds(rows) == [3, 4]
    assert standing_rounds(rows[:3]) == [] and standing_rounds(rows[:1]) == []
    assert standing_rounds([{"round": 0}, _row(1, None)]) == [1]
