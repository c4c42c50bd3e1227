"""Judges sized for real reward models, for real: a group of judge actors (samples sharded, scores back in order)
gives exactly the scores of one judge, and the LLM judge (a vLLM engine inside the judge actor) scores the expected
rating under its model's next-token distribution, checked against transformers computing the same thing."""

import math

import pytest
import ray

import hub_standin
from iterdpo.config.schema import JudgeConfig
from iterdpo.core.errors import ConfigError
from iterdpo.rounds.groups import JudgeGroup
from iterdpo.rounds.runtime import actor_env
from iterdpo.scorers.llm_judge import RatingPrompts
from iterdpo.config.scorers import ScorerSpec

pytestmark = pytest.mark.slow

CONVERSATIONS = hub_standin.conversations(7)
PROMPTS = [turns[max(i for i, m in enumerate(turns) if m["role"] == "user")]["content"] for turns in CONVERSATIONS]
RESPONSES = ["A wonderful, moving story.", "It was dull.", "", "Fine, I guess.", "Terrible and boring!",
             "Great fun for everyone.", "Nothing to say."]


def _specs() -> list[ScorerSpec]:
    return [ScorerSpec("vader"), ScorerSpec("sentiment", weight=0.0),
            ScorerSpec("hf_reward_model", weight=0.5, name="rm", options={"path": hub_standin.REWARD_MODEL}),
            ScorerSpec("llm_judge", weight=0.2, options={"model": hub_standin.POLICY, "kv_cache_gib": 0.1, "dtype": "float32",
                                                         "max_model_len": 512})]


@pytest.fixture(scope="module")
def judged(ray_session, hub):
    options = {"runtime_env": {"env_vars": actor_env()}}
    results = {}
    for replicas in (1, 2):
        group = JudgeGroup.create(JudgeConfig(scorers=_specs(), replicas=replicas, num_cpus=0.5 / replicas), options)
        try:
            results[replicas] = group.score(PROMPTS, RESPONSES, CONVERSATIONS, toxicity=True)
            if replicas == 1:  # one sample alone, for the batching check
                results["alone"] = group.score(PROMPTS[3:4], RESPONSES[3:4], CONVERSATIONS[3:4], toxicity=False)
        finally:
            group.kill()
    return results


def test_two_judge_replicas_give_exactly_the_scores_of_one(judged):
    (one, toxicity_one), (two, toxicity_two) = judged[1], judged[2]
    assert one.combined == two.combined and one.components == two.components and toxicity_one == toxicity_two
    assert len(one.combined) == len(RESPONSES) and all(math.isfinite(v) for v in one.combined)
    assert one.dropped == two.dropped == {name: 0 for name in one.components}


def test_the_llm_judge_scores_the_expected_rating_under_its_model(judged, hub):
    """The reference: transformers' logits at the last position of the same rubric, softmax over the rating ids."""
    import torch
    from transformers import AutoModelForCausalLM

    folder = hub[hub_standin.POLICY]
    prompts = RatingPrompts(folder, "", ["1", "2", "3", "4", "5"], "auto")
    assert prompts.chat  # the stand-in has a chat template: the rubric is a user turn
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    expected = []
    for turns, response in zip(CONVERSATIONS, RESPONSES):
        ids = prompts.tokenizer(prompts.render(turns, response), return_tensors="pt").input_ids
        with torch.no_grad():
            probs = model(ids).logits[0, -1, prompts.token_ids].softmax(-1)
        expected.append(sum(value * p for value, p in zip([1, 2, 3, 4, 5], probs.tolist())))
    scores = judged[1][0].components["llm_judge"]
    assert scores == pytest.approx(expected, abs=1e-4)
    assert all(1.0 <= s <= 5.0 for s in scores) and len(set(round(s, 6) for s in scores)) > 1
    alone = judged["alone"][0].components["llm_judge"][0]
    assert alone == pytest.approx(scores[3], abs=1e-6)  # batching does not change a sample's score


def test_the_reward_model_reads_the_conversation(judged, hub):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = hub[hub_standin.REWARD_MODEL]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32).eval()
    text = tokenizer.apply_chat_template([*CONVERSATIONS[0], {"role": "assistant", "content": RESPONSES[0]}],
                                         tokenize=False)
    with torch.no_grad():
        logit = model(**tokenizer(text, return_tensors="pt", add_special_tokens=False)).logits[0, 0].item()
    assert judged[1][0].components["rm"][0] == pytest.approx(logit, abs=1e-5)


def test_llm_judge_settings_are_checked_before_any_engine_starts(hub, tmp_path):
    folder = hub[hub_standin.POLICY]
    with pytest.raises(ConfigError, match="llm_judge.ratings: '1000000' is [0-9]+ tokens"):
        RatingPrompts(folder, "", ["1", "1000000"], "auto")
    template = tmp_path / "rubric.txt"
    template.write_text("Rate {response} from 1 to 5.")
    with pytest.raises(ConfigError, match=r"llm_judge.template: '.*rubric.txt' lacks \{prompt\}"):
        RatingPrompts(folder, str(template), ["1", "2"], "auto")
    with pytest.raises(ConfigError, match="ratings: expected numbers"):
        ScorerSpec("llm_judge", options={"model": hub_standin.POLICY, "ratings": ["a", "b"]})
    with pytest.raises(ConfigError, match="llm_judge.options.model: expected the judge model"):
        ScorerSpec("llm_judge")
    template.write_text("User said {prompt}; the reply {response} {not a placeholder}")
    custom = RatingPrompts(folder, str(template), ["1", "2"], "no")
    assert custom.render([{"role": "user", "content": "hi"}], "yo") == "User said hi; the reply yo {not a placeholder}"
