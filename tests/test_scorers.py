"""Scorers with the real packages and data; only the robust-wrapper tests use deliberately failing Python scorers."""

import json
import math
import threading
import time

import numpy as np
import pytest

from iterdpo.core.errors import ConfigError
from iterdpo.scorers.combine import combine_scores, judge_agreement
from iterdpo.scorers.factory import build_judge, build_scorer
from iterdpo.scorers.robust import RobustScorer, ScorerError
from iterdpo.scorers.safety import is_refusal, refusal_agreement
from iterdpo.scorers.sentiment import review_classifier
from iterdpo.config.scorers import ScorerSpec, spec_from_dict
from iterdpo.core.devices import device_kind
from iterdpo.scorers.sentiment import ReviewClassifier, _fit, _save, _split

POSITIVE = "A wonderful, moving film with superb performances."
NEGATIVE = "A dull, lifeless mess that wastes its cast."


# ---------------------------------------------------------------- sentiment (review classifier, VADER)


@pytest.fixture(scope="module")
def review_cache(tmp_path_factory):
    """Trains the review classifier once into a fresh cache, for this module only."""
    with pytest.MonkeyPatch.context() as patch:
        cache = tmp_path_factory.mktemp("iterdpo-cache")
        patch.setenv("ITERDPO_CACHE", str(cache))
        review_classifier()
        yield cache


def test_review_classifier_beats_majority_baseline_held_out(review_cache):
    metrics = review_classifier().metrics
    assert metrics["n_test"] > 2000 and metrics["n_train"] > 4 * metrics["n_test"] - 10
    assert 0.5 < metrics["majority_baseline"] < 0.65
    assert metrics["heldout_accuracy"] > metrics["majority_baseline"] + 0.1  # measured: 0.777 vs 0.581


def test_review_classifier_cache_holds_no_pickles_and_is_reused(review_cache):
    (folder,) = (review_cache / "judges").iterdir()
    assert sorted(path.name for path in folder.iterdir()) == ["config.json", "vocabulary.json", "weights.npz"]
    terms = json.loads((folder / "vocabulary.json").read_text(encoding="utf-8"))
    with np.load(folder / "weights.npz", allow_pickle=False) as arrays:
        assert arrays["coef"].shape == arrays["idf"].shape == (len(terms),)
    stamp = (folder / "config.json").stat().st_mtime_ns
    first = review_classifier().predict_proba([POSITIVE, NEGATIVE])
    again = review_classifier().predict_proba([POSITIVE, NEGATIVE])
    assert (folder / "config.json").stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(first, again)


def test_numpy_scoring_from_saved_arrays_matches_sklearn(tmp_path):
    train, test = _split(seed=1)
    vectorizer, model = _fit([t for t, _ in train[:1500]], [label == "fresh" for _, label in train[:1500]])
    _save(tmp_path, vectorizer, model, metrics={}, seed=1)
    texts = [t for t, _ in test[:200]] + ["", "zzzz qqqq", POSITIVE]
    expected = model.predict_proba(vectorizer.transform(texts))[:, 1]
    np.testing.assert_allclose(ReviewClassifier.load(tmp_path).predict_proba(texts), expected, rtol=0, atol=1e-12)


def test_sentiment_scorers_order_positive_above_negative(review_cache):
    sentiment = build_scorer(ScorerSpec("sentiment"))
    good, bad = sentiment(["", ""], [POSITIVE, NEGATIVE])
    assert 0.0 <= bad < 0.5 < good <= 1.0
    with_prompt = build_scorer(ScorerSpec("sentiment", options={"include_prompt": True}))
    assert with_prompt([NEGATIVE], [""]) == pytest.approx([bad])
    vader = build_scorer(ScorerSpec("vader"))
    good, bad = vader(["", ""], [POSITIVE, NEGATIVE])
    assert -1.0 <= bad < 0.0 < good <= 1.0


# ---------------------------------------------------------------- safety: toxicity, refusal


def test_toxicity_scores_insults_above_clean_text():
    toxicity = build_scorer(ScorerSpec("toxicity"))
    insult, clean = toxicity(["", ""], ["You are a stupid fucking idiot.", "Thank you, have a lovely day."])
    assert insult > 0.9 and clean < 0.2
    assert toxicity([], []) == []


def test_refusal_detector_on_typical_wordings():
    refusals = ["I'm sorry, but I can't help with that.", "I can\u2019t assist with making weapons.",
                "As an AI language model, I must decline.", "My apologies, but I'm unable to provide that.",
                "Creating a fake ID is illegal and unethical."]
    answers = ["Sure! Here is a recipe for pancakes.", "The capital of France is Paris."]
    assert all(is_refusal(text) for text in refusals)
    assert not any(is_refusal(text) for text in answers)
    assert not is_refusal("x" * 400 + " I'm sorry")  # only the opening of a response is read
    scorer = build_scorer(ScorerSpec("refusal"))
    assert scorer(["q", "q"], [refusals[0], answers[0]]) == [1.0, 0.0]


def test_refusal_detector_agrees_with_pyrit_human_labels():
    phrases = refusal_agreement()
    # 169 labelled responses, 109 refusals. pyrit also labels non-sequiturs as refusals, which wording cannot
    # reveal: phrase matching is precise (measured 1.00) with recall 0.55 and accuracy 0.71 (majority 0.645).
    assert phrases["n"] == 169 and phrases["human_refusals"] == 109
    assert phrases["precision"] >= 0.95
    assert phrases["accuracy"] > phrases["majority_baseline"] and phrases["accuracy"] > 0.68
    with_off_topic = refusal_agreement(off_topic=True)  # measured 0.935 (rule chosen on this set: optimistic)
    assert with_off_topic["accuracy"] > 0.85 and with_off_topic["recall"] > 0.85


# ---------------------------------------------------------------- hf_reward_model on tiny random models


@pytest.fixture(scope="module")
def reward_models(tmp_path_factory):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2ForSequenceClassification

    from iterdpo.data.models import _train_tokenizer

    tokenizer = _train_tokenizer(vocab_size=512)
    root = tmp_path_factory.mktemp("reward-models")

    def config(**extra):
        return Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                           pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, **extra)

    torch.manual_seed(0)
    folders = {
        "scalar": Qwen2ForSequenceClassification(config(num_labels=1)),
        "labels": Qwen2ForSequenceClassification(config(num_labels=2, id2label={0: "bad", 1: "good"},
                                                        label2id={"bad": 0, "good": 1})),
        "causal": Qwen2ForCausalLM(config()),
    }
    for name, model in folders.items():
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    tokenizer.chat_template = "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }}\n{% endfor %}"
    folders["chat"] = folders["scalar"]
    folders["scalar"].save_pretrained(root / "chat")
    tokenizer.save_pretrained(root / "chat")
    return root


PROMPTS = ["The film was", "Honestly,", "I expected", "This movie", "A"]
RESPONSES = [" great fun.", " the worst acting I have seen in years, truly awful", " more.", " is fine", " b c d e f"]


def _rm(folder, **options):
    return build_scorer(ScorerSpec("hf_reward_model", options={"path": str(folder), **options}))


def test_reward_model_scalar_logit_is_the_same_batched_or_alone(reward_models):
    scorer = _rm(reward_models / "scalar", batch_size=3)
    assert scorer.device == device_kind() and scorer.input_format == "concat"
    batched = scorer(PROMPTS, RESPONSES)
    alone = [scorer([p], [r])[0] for p, r in zip(PROMPTS, RESPONSES)]
    assert len(batched) == len(PROMPTS) and all(math.isfinite(v) for v in batched)
    np.testing.assert_allclose(batched, alone, atol=1e-5)
    assert len(set(np.round(batched, 6))) == len(batched)  # a random head still tells texts apart


def test_reward_model_label_probability_and_chat_format(reward_models):
    import torch

    scorer = _rm(reward_models / "labels", label="good")
    probs = scorer(PROMPTS, RESPONSES)
    batch = scorer.tokenizer([p + r for p, r in zip(PROMPTS, RESPONSES)], padding=True, return_tensors="pt")
    with torch.inference_mode():
        expected = scorer.model(**batch).logits.softmax(-1)[:, 1]
    np.testing.assert_allclose(probs, expected.numpy(), atol=1e-6)
    assert _rm(reward_models / "labels", label=0)(PROMPTS[:1], RESPONSES[:1])[0] == pytest.approx(1 - probs[0])

    chat = _rm(reward_models / "chat")
    assert chat.input_format == "chat"
    plain = _rm(reward_models / "chat", input_format="response")
    assert chat(["hi"], ["there"]) == pytest.approx(plain([""], ["<user> hi\n<assistant> there\n"]), abs=1e-6)


def test_reward_model_user_errors_are_config_errors(reward_models, tmp_path):
    with pytest.raises(ConfigError, match="has no config.json"):
        _rm(tmp_path)
    with pytest.raises(ConfigError, match="Qwen2ForCausalLM, expected a \\*ForSequenceClassification"):
        _rm(reward_models / "causal")
    with pytest.raises(ConfigError, match="2 labels"):
        _rm(reward_models / "labels")
    with pytest.raises(ConfigError, match="'neutral' is not one of"):
        _rm(reward_models / "labels", label="neutral")


# ---------------------------------------------------------------- function scorers and specs


def test_function_scorer_by_import_path(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "def length(prompts, responses):\n    return [float(len(r)) for r in responses]\nNOT_CALLABLE = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    scorer = build_scorer(ScorerSpec("function", options={"path": "my_rewards:length"}))
    assert scorer(["a", "b"], ["xy", ""]) == [2.0, 0.0]
    with pytest.raises(ConfigError, match="cannot import 'my_rewards:missing'"):
        build_scorer(ScorerSpec("function", options={"path": "my_rewards:missing"}))
    with pytest.raises(ConfigError, match="expected a callable"):
        build_scorer(ScorerSpec("function", options={"path": "my_rewards:NOT_CALLABLE"}))
    with pytest.raises(ConfigError, match="expected 'package.module:function'"):
        build_scorer(ScorerSpec("function", options={"path": "my_rewards.length"}))


def test_specs_reject_bad_kinds_options_and_values():
    with pytest.raises(ConfigError, match="expected one of"):
        ScorerSpec("sentimental")
    with pytest.raises(ConfigError, match="did you mean 'refusal.options.off_topic'"):
        build_scorer(ScorerSpec("refusal", options={"offtopic": True}))
    with pytest.raises(ConfigError, match="refusal.options.off_topic: expected bool"):
        build_scorer(ScorerSpec("refusal", options={"off_topic": "yes"}))
    with pytest.raises(ConfigError, match="retries"):
        ScorerSpec("vader", retries=-1)
    spec = spec_from_dict({"kind": "toxicity", "weight": -1, "timeout_s": 5, "name": "tox"})
    assert spec == ScorerSpec("toxicity", weight=-1.0, timeout_s=5.0, name="tox")
    with pytest.raises(ConfigError, match="unknown config key 'judge.scorers\\[0\\].wieght'"):
        spec_from_dict({"kind": "vader", "wieght": 1}, "judge.scorers[0]")


# ---------------------------------------------------------------- robust wrapper (deliberately failing scorers)


class Flaky:
    """Raises on its first `failures` calls, and on any batch that holds a response equal to `poison`."""

    def __init__(self, failures=0, poison=None, hang=None, bad_values=None):
        self.failures, self.poison, self.hang, self.bad_values, self.calls = failures, poison, hang, bad_values, 0

    def __call__(self, prompts, responses):
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("server busy")
        if self.poison in responses:
            raise ValueError("cannot parse\nthis sample")
        if self.hang in responses:
            time.sleep(1.0)
        return [self.bad_values.get(r, 1.0) if self.bad_values else float(len(r)) for r in responses]


def test_robust_retries_a_failed_batch_then_succeeds():
    flaky = Flaky(failures=1)
    batch = RobustScorer(flaky, "flaky", retries=1).score(["p"] * 3, ["a", "bb", "ccc"])
    assert batch.scores == [1.0, 2.0, 3.0] and batch.failed_batch_calls == 1 and batch.dropped == 0
    assert flaky.calls == 2


def test_robust_isolates_a_bad_sample_as_nan():
    flaky = Flaky(poison="BAD")
    batch = RobustScorer(flaky, "flaky", retries=1).score(["p"] * 4, ["a", "BAD", "ccc", "dd"])
    assert batch.scores[:1] + batch.scores[2:] == [1.0, 3.0, 2.0] and math.isnan(batch.scores[1])
    assert batch.dropped == 1 and batch.failed_batch_calls == 2 and flaky.calls == 2 + 4


def test_robust_turns_non_finite_values_into_dropped_samples():
    flaky = Flaky(bad_values={"nan": math.nan, "none": None, "inf": math.inf, "text": "high"})
    batch = RobustScorer(flaky, "values").score(["p"] * 5, ["ok", "nan", "none", "inf", "text"])
    assert batch.scores[0] == 1.0 and batch.dropped == 4 and flaky.calls == 1


def test_robust_times_out_a_hanging_sample():
    start = time.perf_counter()
    batch = RobustScorer(Flaky(hang="HANG"), "slow", timeout_s=0.2, retries=0).score(["p"] * 3, ["a", "HANG", "cc"])
    assert batch.scores[0] == 1.0 and batch.scores[2] == 2.0 and math.isnan(batch.scores[1])
    assert time.perf_counter() - start < 0.9  # batch 0.2 s + the sample alone 0.2 s, not the 1 s hang


class SlowEngine:
    """A stand-in for a model scorer: `per_sample_s` a sample (the first call `first_call_s` in all), and a record of
    how many calls ran at once."""

    exclusive = True

    def __init__(self, per_sample_s: float, first_call_s: float | None = None):
        self.per_sample, self.first = per_sample_s, first_call_s
        self.running, self.most_at_once, self.calls = 0, 0, 0
        self.lock = threading.Lock()

    def __call__(self, prompts, responses):
        with self.lock:
            self.calls += 1
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
            first = self.calls == 1
        time.sleep(self.first if first and self.first is not None else self.per_sample * len(responses))
        with self.lock:
            self.running -= 1
        return [float(len(r)) for r in responses]


def test_the_timeout_bounds_each_mini_batch_not_the_whole_batch():
    """16 samples at 0.0375 s each: calls of 4 take 0.15 s, well within a 0.4 s timeout. One call of all 16 (no
    mini-batches) takes 0.6 s and times out; its samples are then scored alone, after it ends."""
    engine = SlowEngine(0.0375)
    batch = RobustScorer(engine, "rm", timeout_s=0.4, retries=0, batch_size=4).score(["p"] * 16, ["ab"] * 16)
    assert batch.scores == [2.0] * 16 and batch.failed_batch_calls == 0 and engine.calls == 4
    engine = SlowEngine(0.0375)
    whole = RobustScorer(engine, "rm", timeout_s=0.4, retries=0).score(["p"] * 16, ["ab"] * 16)
    assert whole.failed_batch_calls == 1 and whole.scores == [2.0] * 16 and engine.most_at_once == 1


def test_a_timed_out_call_is_never_run_twice_on_one_engine_at_once():
    """The first call hangs 0.5 s past a 0.3 s timeout; the retry waits for it, then runs: one call at a time."""
    engine = SlowEngine(0.005, first_call_s=0.5)
    batch = RobustScorer(engine, "judge", timeout_s=0.3, retries=1, batch_size=8).score(["p"] * 8, ["abc"] * 8)
    assert batch.scores == [3.0] * 8 and batch.failed_batch_calls == 1
    assert engine.most_at_once == 1 and engine.calls == 2


def test_an_engine_stuck_past_twice_its_timeout_is_one_line():
    engine = SlowEngine(0.005, first_call_s=2.0)
    with pytest.raises(ScorerError, match="scorer 'judge' is stuck: a call has run past twice its timeout"):
        RobustScorer(engine, "judge", timeout_s=0.2, retries=1).score(["p"] * 2, ["a", "b"])
    assert engine.most_at_once == 1


def test_model_scorers_take_no_timeout_by_default():
    assert spec_from_dict({"kind": "hf_reward_model", "options": {"path": "org/rm"}}).call_timeout_s is None
    assert spec_from_dict({"kind": "llm_judge", "options": {"model": "org/judge"}}).call_timeout_s is None
    assert spec_from_dict({"kind": "toxicity"}).call_timeout_s == 120.0
    assert spec_from_dict({"kind": "llm_judge", "options": {"model": "o/j"}, "timeout_s": 30}).call_timeout_s == 30.0


def test_robust_raises_one_line_error_when_the_scorer_is_broken():
    with pytest.raises(ScorerError) as info:
        RobustScorer(Flaky(failures=100), "remote-rm", retries=2).score(["p"] * 4, ["a", "b", "c", "d"])
    message = str(info.value)
    assert "\n" not in message and "scorer 'remote-rm'" in message and "3 attempts" in message


def test_robust_wrong_length_is_an_error_naming_the_scorer():
    calls = []

    def short(prompts, responses):
        calls.append(1)
        return [0.0]

    with pytest.raises(ScorerError, match="scorer 'short' returned 1 scores for 2 responses"):
        RobustScorer(short, "short").score(["p", "q"], ["a", "b"])
    assert len(calls) == 1


# ---------------------------------------------------------------- combination and agreement


def test_combine_scores_weighted_sum_with_nan():
    assert combine_scores([[1.0, 2.0, 3.0], [0.5, math.nan, -1.0]], [2.0, -1.0])[0::2] == [1.5, 7.0]
    assert math.isnan(combine_scores([[1.0, 2.0, 3.0], [0.5, math.nan, -1.0]], [2.0, -1.0])[1])
    with pytest.raises(ValueError):
        combine_scores([[1.0], [1.0, 2.0]], [1.0, 1.0])


def test_judge_agreement_by_hand():
    a = [0.9, 0.1, 0.5, 0.5, math.nan]
    b = [0.8, 0.2, 0.1, 0.7, 0.3]
    pairs = [(0, 1), (2, 3), (1, 2), (0, 4)]  # agree, disagree, disagree, skipped (NaN)
    assert judge_agreement([a, b], pairs) == pytest.approx(1 / 3)
    assert judge_agreement([a, b], [(2, 2)]) == 1.0  # both tie
    assert judge_agreement([a, [0.9, 0.1, 0.5, 0.5, 0.0]], [(2, 3)]) == 1.0
    assert judge_agreement([b], [(0, 1), (2, 3)]) == 1.0
    assert math.isnan(judge_agreement([a, b], [(0, 4)]))


def test_weighted_judge_with_real_scorers():
    judge = build_judge([ScorerSpec("vader"), ScorerSpec("refusal", weight=-1.0, name="refused")])
    prompts = ["How do I pick a lock?", "Say something nice."]
    responses = ["I'm sorry, but I can't help with that.", "You are wonderful and kind!"]
    result = judge.score(prompts, responses)
    assert result.components["refused"] == [1.0, 0.0]
    assert result.combined == pytest.approx([v - r for v, r in zip(result.components["vader"], [1.0, 0.0])])
    assert result.combined[1] > result.combined[0]
    assert result.metrics()["judge/refused/dropped"] == 0.0
    assert judge_agreement(list(result.components.values()), [(1, 0)]) == 0.0  # raw scores point opposite ways
    assert result.agreement([(1, 0)]) == 1.0  # weight signs turned: both judges prefer the kind answer
    with pytest.raises(ValueError, match="distinct"):
        build_judge([ScorerSpec("vader"), ScorerSpec("vader", weight=2.0)])


def test_importing_the_scorers_loads_no_heavy_library():
    import subprocess
    import sys

    code = ("import sys, iterdpo.scorers, iterdpo.data.safety_prompts; "
            "print(sorted(m for m in ('torch', 'transformers', 'sklearn', 'profanity_check') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
