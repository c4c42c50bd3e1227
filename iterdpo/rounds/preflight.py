"""Everything a run needs, resolved and checked before any actor starts: `iterdpo check` prints it, and every run
(`iterdpo run`, `resume`, `iterdpo.run`) goes through it first.

It resolves the policy (a Hub id is pinned to its commit: the run records `org/name@<commit>`), reads its
tokenizer and chat template, loads the prompts (columns, types, counts; conversations need a chat template) and
checks that every prompt fits the context; checks every scorer the same way (`iterdpo.scorers.checks`), the
trackers' packages, and the actors' resources against what the cluster (or `run.num_cpus`) has. The first problem
is a `ConfigError`: one line, exit code 2.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from iterdpo.config.schema import Config
from iterdpo.config.schedule import round_settings
from iterdpo.config.loading import actor_resources, check_resources
from iterdpo.config.scorers import engine_options
from iterdpo.data.prompts import BUILTIN_REVIEWS, PromptSplit, Skipped, load_prompts, prompt_length
from iterdpo.core.errors import ConfigError
from iterdpo.evaluation.gate import describe_thresholds
from iterdpo.rounds.gpu_plan import GpuPlan, plan_gpus
from iterdpo.evaluation.heldout import SafetyPrompts
from iterdpo.data.models import fits, pin_model, resolve_model
from iterdpo.core.records import Prompt
from iterdpo.scorers.checks import check_scorer
from iterdpo.rundir.trackers import check_installed


log = logging.getLogger("iterdpo")


@dataclass
class Plan:
    cfg: Config  # with every Hub id pinned to its commit
    prompts: PromptSplit
    safety_prompts: SafetyPrompts
    facts: list[tuple[str, str]]  # what `iterdpo check` prints, in order
    skipped: Skipped  # prompts left out for leaving no room for a response


def preflight(cfg: Config) -> Plan:
    """`cfg` resolved and checked, against the resources of the cluster it joins (RAY_ADDRESS) or else of a local
    node of `run.num_cpus` CPUs and this machine's GPUs."""
    prompts = load_prompts(cfg.data, cfg.run.seed)  # cheap input checks first
    safety_prompts = SafetyPrompts.load(cfg.safety, cfg.run.seed)
    check_installed(cfg.run.trackers)
    model = pin_model(cfg.model.path)
    tokenizer = _tokenizer(model, cfg.model.trust_remote_code)
    template = bool(getattr(tokenizer, "chat_template", None))
    if prompts.conversations and not template:
        raise ConfigError(f"data.prompt_field: the prompts are conversations, but the policy '{model}' has no chat "
                          "template to render them")
    fits("generator.max_model_len", cfg.generator.max_model_len, resolve_model(model, weights=False), model)
    prompts, skipped, longest = _fit_prompts(cfg, prompts, safety_prompts, tokenizer)
    scorers = [check_scorer(spec) for spec in cfg.judge.scorers]
    pinned = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, path=model),
                                 judge=dataclasses.replace(cfg.judge, scorers=[spec for spec, _ in scorers]))
    available, where = _resources(cfg)
    check_resources(cfg, available, where + "'s {have}")
    wanted = actor_resources(cfg)
    gpus = _gpu_plan(pinned, int(available.get("GPU", 0))) if wanted["GPU"] else None
    facts = [
        ("model", f"{model} ({_architecture(model)}, {'chat template' if template else 'no chat template'})"),
        ("prompts", _describe_prompts(cfg, prompts, longest, skipped)),
        *((f"judge: {spec.label}", f"weight {spec.weight:g}, {text}") for spec, text in scorers),
        *_pairwise_plans(cfg),
        ("judges", f"{cfg.judge.replicas} x ({cfg.judge.num_cpus:g} CPU, {cfg.judge.num_gpus:g} GPU), each with "
                   "every scorer; the first also scores safety"),
        ("resources", f"the actors ask for {wanted['CPU']:g} CPU and {wanted['GPU']:g} GPU; {where} has "
                      f"{available.get('CPU', 0):g} CPU and {available.get('GPU', 0):g} GPU"),
        *(gpus.lines() if gpus else []),
        ("trackers", ", ".join(cfg.run.trackers) + " (and metrics.jsonl)"),
        ("gate", _describe_gate(cfg)),
        ("plan", _describe_rounds(cfg, prompts, safety_prompts)),
    ]
    return Plan(pinned, prompts, safety_prompts, facts, skipped)


def _pairwise_plans(cfg: Config) -> list[tuple[str, str]]:
    from iterdpo.scorers.pairwise import plan_line

    return [(f"judge: {spec.label} plan",
             plan_line(cfg.round.samples_per_prompt, spec.parsed_options().max_comparisons))
            for spec in cfg.judge.scorers if spec.kind == "pairwise_judge"]


def _gpu_plan(cfg: Config, gpu_count: int) -> GpuPlan:
    """What each GPU would hold (`iterdpo.rounds.gpu_plan`), checked against `run.gpu_memory_gib` (or this machine's
    first GPU); the models' configs are read from this node's copies."""
    locations = [(cfg.model.path, "causal")]
    for spec in cfg.judge.scorers:
        if spec.kind == "hf_reward_model":
            locations.append((spec.parsed_options().path, "classifier"))
        elif engine_options(spec):
            locations.append((engine_options(spec).model, "causal"))
    folders = {location: resolve_model(location, kind=kind, weights=False) for location, kind in locations}
    capacity = cfg.run.gpu_memory_gib
    if capacity is None:
        import torch

        capacity = torch.cuda.get_device_properties(0).total_memory / 2**30 if torch.cuda.is_available() else None
    plan = plan_gpus(cfg, gpu_count, capacity, folders)
    plan.check()
    return plan


def _tokenizer(model: str, trust_remote_code: bool):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model(model, weights=False), trust_remote_code=trust_remote_code)


def _architecture(model: str) -> str:
    import json

    config = json.loads((resolve_model(model, weights=False) / "config.json").read_text(encoding="utf-8"))
    return (config.get("architectures") or ["unknown architecture"])[0]


def _fit_prompts(cfg: Config, prompts: PromptSplit, safety: SafetyPrompts, tokenizer
                 ) -> tuple[PromptSplit, Skipped, int]:
    """The prompts a run uses, as the engine sees them, without those that leave no room for a response (skipped and
    counted; more than `data.max_skipped_share` of them is an error); every safety prompt must fit. Returns the split,
    what was skipped and the longest prompt kept."""
    limit = cfg.generator.max_model_len - cfg.generator.max_new_tokens
    lengths: list[int] = []

    def leaves_room(prompt: Prompt) -> bool:
        lengths.append(prompt_length(tokenizer, prompt))
        return lengths[-1] <= limit

    fitting, skipped = prompts.fitting(leaves_room, cfg.run.rounds * cfg.data.prompts_per_round)
    if skipped.share > cfg.data.max_skipped_share or not fitting.train or not fitting.eval:
        raise ConfigError(f"data.prompts: {skipped.count} of the {skipped.looked_at} prompts looked at "
                          f"({skipped.share:.1%}) leave no room for generator.max_new_tokens="
                          f"{cfg.generator.max_new_tokens} within generator.max_model_len="
                          f"{cfg.generator.max_model_len} (the longest has {max(lengths)} tokens), more than "
                          f"data.max_skipped_share={cfg.data.max_skipped_share:g} allows")
    suite = [(text, True) for text in safety.harmful + safety.benign] + [(text, False) for text in safety.toxicity]
    room = cfg.generator.max_model_len - cfg.safety.max_new_tokens
    for text, chat in suite:
        length = prompt_length(tokenizer, Prompt(text), chat)
        if length > room:
            raise ConfigError(f"safety.max_new_tokens: a safety prompt has {length} tokens and leaves less than "
                              f"{cfg.safety.max_new_tokens} of generator.max_model_len={cfg.generator.max_model_len}: "
                              f"{text[:60]!r}")
    return fitting, skipped, max((length for length in lengths if length <= limit), default=0)


def _resources(cfg: Config) -> tuple[dict[str, float], str]:
    """What the run will have: the cluster it joins (RAY_ADDRESS), else a local node of `run.num_cpus` CPUs and
    this machine's GPUs."""
    if os.environ.get("RAY_ADDRESS"):
        import ray

        from iterdpo.rounds.runtime import init_ray

        init_ray(cfg.run.num_cpus)
        return dict(ray.cluster_resources()), "the Ray cluster"
    import torch

    cpus = cfg.run.num_cpus or float(os.cpu_count() or 1)
    return {"CPU": cpus, "GPU": float(torch.cuda.device_count())}, "this node"


def _describe_prompts(cfg: Config, prompts: PromptSplit, longest: int, skipped: Skipped) -> str:
    kind = "conversations" if prompts.conversations else "text"
    held_out = f"split '{cfg.data.eval_split}'" if cfg.data.eval_split else "the same split"
    plain = cfg.data.prompts == BUILTIN_REVIEWS or cfg.data.prompts.endswith(".txt")
    where = kind if plain else f"split '{cfg.data.split}', column '{cfg.data.prompt_field}', {kind}"
    dropped = (f"; {skipped.count} of {skipped.looked_at} looked at skipped: too long" if skipped.count else "")
    return (f"{cfg.data.prompts} ({where}): {len(prompts.train)} training prompts, {len(prompts.eval)} held out "
            f"from {held_out}; longest {longest} tokens of "
            f"{cfg.generator.max_model_len - cfg.generator.max_new_tokens} allowed{dropped}")


def _describe_gate(cfg: Config) -> str:
    """The smallest change each configured threshold rejects; a threshold that can never fire is a warning."""
    lines, warnings = describe_thresholds(cfg)
    for warning in warnings:
        log.warning("gate: %s", warning)
    if not lines and not warnings:
        return "no thresholds (gate.max_*): every round is accepted unless its training diverges"
    return "; ".join(lines) if lines else "no threshold can fire (warnings above)"


def _describe_rounds(cfg: Config, prompts: PromptSplit, safety: SafetyPrompts) -> str:
    per_round = cfg.data.prompts_per_round
    samples = [round_settings(cfg, cfg.schedule, index).samples_per_prompt for index in range(1, cfg.run.rounds + 1)]
    pairs = [per_round * (n * (n - 1) // 2 if cfg.pairs.strategy == "all_above_margin" else int(n >= 2))
             for n in samples]
    if not all(pairs):
        raise ConfigError(f"round.samples_per_prompt: {min(samples)} sample per prompt cannot form a pair; expected "
                          "at least 2")
    total = sum(samples) * per_round
    evaluation = len(prompts.eval) * cfg.generator.eval_samples_per_prompt
    suite = len(safety.harmful) + len(safety.toxicity) + len(safety.benign)
    return (f"{cfg.run.rounds} rounds x {per_round} prompts x {samples[0]}"
            f"{'' if len(set(samples)) == 1 else '..'} samples = {total} samples, at most "
            f"{total * cfg.generator.max_new_tokens:,} new tokens; at most {max(pairs)} pairs per round; each "
            f"evaluation {evaluation} held-out samples and {suite} safety prompts")
