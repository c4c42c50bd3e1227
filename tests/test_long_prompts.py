"""Prompts that leave no room for a response are skipped and counted, not fatal; a run refuses only past
`data.max_skipped_share`."""

import pytest

from iterdpo.config.loading import config_from_dict
from iterdpo.core.errors import ConfigError
from iterdpo.rounds.preflight import preflight

SMOKE = {"model": {"path": "builtin:tiny-qwen2"}, "data": {"prompts_per_round": 4, "eval_prompts": 3},
         "generator": {"max_model_len": 128, "max_new_tokens": 24}, "run": {"rounds": 2, "num_cpus": 2},
         "safety": {"harmful_prompts": 2, "toxicity_prompts": 2, "benign_prompts": 2, "max_new_tokens": 16}}
LONG = " ".join(["a very long review of a film that goes on and on"] * 30)  # ~330 tokens: no room in 128


def _plan(tmp_path, lines: list[str], **data):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(lines) + "\n")
    return preflight(config_from_dict({**SMOKE, "data": {**SMOKE["data"], "prompts": str(prompts), **data}}))


def test_long_prompts_are_skipped_and_counted(tmp_path):
    """40 short prompts and 2 long ones, shuffled into held-out and training prompts: a long held-out prompt is
    dropped; training prompts are drawn in order past the long ones until the 2 rounds' 8 are found (the pool's
    rest stays, unread). What was skipped is counted against what was looked at, and `iterdpo check` says so."""
    from iterdpo.data.prompts import load_prompts

    short = [f"short prompt number {i}" for i in range(40)]
    plan = _plan(tmp_path, short[:20] + [LONG, LONG + " again"] + short[20:], max_skipped_share=0.2)
    unfiltered = load_prompts(plan.cfg.data, plan.cfg.run.seed)  # the same shuffled split, long ones included
    expected_eval = [p for p in unfiltered.eval if p.text.startswith("short")]
    scanned = []
    for prompt in unfiltered.train:
        if sum(p.text.startswith("short") for p in scanned) == 8:
            break
        scanned.append(prompt)
    assert list(plan.prompts.eval) == expected_eval
    kept = [p for p in scanned if p.text.startswith("short")]
    assert len(kept) == 8 and list(plan.prompts.train) == kept + list(unfiltered.train[len(scanned):])
    long_seen = [p for p in list(unfiltered.eval) + scanned if not p.text.startswith("short")]
    assert (plan.skipped.count, plan.skipped.looked_at) == (len(long_seen), len(unfiltered.eval) + len(scanned))
    (prompts_fact,) = [text for name, text in plan.facts if name == "prompts"]
    if long_seen:
        assert f"{len(long_seen)} of {plan.skipped.looked_at} looked at skipped: too long" in prompts_fact


def test_more_than_the_allowed_share_is_refused_in_one_line(tmp_path):
    with pytest.raises(ConfigError) as caught:
        _plan(tmp_path, [LONG + f" {i}" for i in range(10)] + [f"short {i}" for i in range(10)])
    message = str(caught.value)
    assert message.startswith("data.prompts: ") and "more than data.max_skipped_share=0.05 allows" in message
    assert "leave no room for generator.max_new_tokens=24 within generator.max_model_len=128" in message
