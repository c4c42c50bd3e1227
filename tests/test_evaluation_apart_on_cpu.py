"""The held-out pass under pi0 run beside the safety suite, as it runs where the learner computes apart from the
engines (here: a 1-thread engine and a 1-thread learner on 2 cores): the KL it reports is the one plain
transformers computes from pi0's files for the samples the round saved, and no figure differs from the same run's
with the pass after the engines."""

import math

import pytest
import torch
from datasets import load_from_disk
from transformers import AutoModelForCausalLM

from iterdpo.config.loading import load_config
from iterdpo.core.devices import cpu_cores
from iterdpo.data.models import resolve_model
from iterdpo.rounds import orchestrator as orchestrator_module
from iterdpo.rounds.orchestrator import Orchestrator
from iterdpo.rounds.weights import PolicyWeights

pytestmark = pytest.mark.slow


def pi0_logprobs(model, prompt: list[int], response: list[int]) -> list[float]:
    """Per-token log-probs of `response` from one sequence's whole forward pass, alone (no padding, no batch)."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].double()
    return logits.log_softmax(-1).gather(-1, ids[0, len(prompt) :, None]).squeeze(-1).tolist()


def run_round(cfg, run_dir, started: list[str]) -> tuple[bool, list[dict], list[str]]:
    """The run's rows, and what its evaluations started, in order ("safety" suites, "pi0" passes)."""
    started.clear()
    orchestrator = Orchestrator(cfg, run_dir)
    try:
        return orchestrator.weights.learner_apart, orchestrator.run(), list(started)
    finally:
        orchestrator.shutdown()


def record_starts(monkeypatch) -> list[str]:
    started: list[str] = []
    safety, under_pi0 = orchestrator_module.safety_metrics, PolicyWeights.under_pi0
    monkeypatch.setattr(orchestrator_module, "safety_metrics",
                        lambda *args, **kwargs: started.append("safety") or safety(*args, **kwargs))
    monkeypatch.setattr(PolicyWeights, "under_pi0",
                        lambda self, sequences: started.append("pi0") or under_pi0(self, sequences))
    return started


def test_kl_to_pi0_scored_beside_the_safety_suite(ray_session, tmp_path, monkeypatch):
    """Beside the safety suite, the pass gives pi0's log-probs (plain transformers, from pi0's files) and every
    evaluation figure that the same run with the pass after the engines gives, bit for bit."""
    assert cpu_cores() >= 2, "a 1-thread engine beside a 1-thread learner needs 2 cores"
    cfg = load_config("configs/smoke.yaml", ["run.rounds=1", "generator.torch_threads=1", "learner.torch_threads=1"])
    started = record_starts(monkeypatch)
    apart, rows, order = run_round(cfg, tmp_path / "apart", started)
    monkeypatch.setattr("iterdpo.rounds.weights.cpu_cores", lambda: 1)  # 2 threads on 1 core: after the engines
    after, rows_after, order_after = run_round(cfg, tmp_path / "after", started)
    assert apart and not after
    # round 0 (pi0) has no pass; round 1's starts before its safety suite only where the learner is apart
    assert order == ["safety", "pi0", "safety"] and order_after == ["safety", "safety", "pi0"]
    samples = load_from_disk(str(tmp_path / "apart" / "round_001" / "eval_samples"))
    model = AutoModelForCausalLM.from_pretrained(resolve_model(cfg.model.path), dtype=torch.float32).eval()
    under_pi0 = [pi0_logprobs(model, prompt, response) if response else []
                 for prompt, response in zip(samples["prompt_ids"], samples["response_ids"])]
    k1 = [sum(sampled) - sum(theirs) for sampled, theirs in zip(samples["logprobs"], under_pi0)]
    assert len(k1) == cfg.data.eval_prompts * cfg.generator.eval_samples_per_prompt
    assert rows[1]["policy/end_hash"] != rows[1]["policy/start_hash"]  # trained: the policy is not pi0
    assert math.isclose(rows[1]["kl/policy_to_pi0_k1"], sum(k1) / len(k1), abs_tol=1e-3)
    # the samples' own policy in pi0's place would give a KL of 0 within the parity tolerance, token by token
    gap = max(abs(a - b) for sampled, theirs in zip(samples["logprobs"], under_pi0) for a, b in zip(sampled, theirs))
    assert gap > 100 * cfg.sync.parity_tolerance
    figures = [key for key in rows[1] if key.startswith(("kl/", "eval/", "safety/"))]
    assert len(figures) > 20 and {key: rows[1][key] for key in figures} == {key: rows_after[1][key] for key in figures}
