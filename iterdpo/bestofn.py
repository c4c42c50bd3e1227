"""Best-of-N with the implicit reward: sample N responses from a run's policy and rank them by
beta * (log pi(y|x) - log pi_ref(y|x)), the reward DPO's policy defines against its reference.

One engine does both sides: it samples and scores with the policy, then the reference weights are loaded in place
and the same sequences are scored again.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path


from iterdpo.config.schema import ModelConfig
from iterdpo.core.errors import ConfigError
from iterdpo.rounds.groups import GeneratorGroup
from iterdpo.core.records import Prompt
from iterdpo.rundir.layout import RunDir, saved_config
from iterdpo.rounds.runtime import actor_env, init_ray


@dataclass
class Ranked:
    prompt: str
    response: str
    implicit_reward: float
    policy_logp: float
    reference_logp: float


def best_of_n(run_dir: Path, prompts: list[str], n: int, round_index: int | None = None,
              beta: float | None = None, seed: int = 0) -> list[list[Ranked]]:
    """For each prompt, its N samples from the run's saved policy, best first. The reference is pi0."""
    cfg = saved_config(run_dir, needs_metrics=False)
    files = RunDir(run_dir)
    policy = files.checkpoint(round_index) if round_index is not None else files.latest_checkpoint()
    if policy is None or not policy.is_dir():
        raise ConfigError(f"best-of-n: no saved policy in '{run_dir}'" +
                          (f" for round {round_index}" if round_index is not None else ""))
    beta = cfg.round.beta if beta is None else beta
    init_ray(cfg.run.num_cpus)
    # one engine, started as the run's generators are (resources, environment, threads)
    engines = GeneratorGroup.create(ModelConfig(path=str(policy)), dataclasses.replace(cfg.generator, replicas=1),
                                    seed, {"runtime_env": {"env_vars": actor_env()}}, cfg.sync.bucket_mb)
    try:
        sampling = cfg.generator.sampling(n, seed)
        samples = engines.generate([Prompt(text) for text in prompts], sampling)
        sequences = [(s.prompt_ids, s.response_ids) for s in samples]
        policy_logps = engines.score(sequences)
        reference_logps = engines.score(sequences, cfg.model.path)  # pi0, the run's pinned location
    finally:
        engines.kill()
    ranked: list[list[Ranked]] = [[] for _ in prompts]
    for sample, on_policy, on_reference in zip(samples, policy_logps, reference_logps):
        logp, ref = sum(on_policy), sum(on_reference)
        ranked[sample.prompt_index].append(Ranked(sample.prompt, sample.text, beta * (logp - ref), logp, ref))
    return [sorted(group, key=lambda r: -r.implicit_reward) for group in ranked]
