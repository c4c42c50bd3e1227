"""Seconds per round of the iterdpo loop against TRL's online DPO trainer, on the same model, prompts and reward.

    .venv/bin/python benchmarks/vs_trl.py                                       # configs/smoke.yaml (tiny model)
    .venv/bin/python benchmarks/vs_trl.py --quick
    .venv/bin/python benchmarks/vs_trl.py --config configs/default.yaml --prompts 8 --rounds 2
    .venv/bin/python benchmarks/vs_trl.py --config configs/online.yaml --prompts 8 --rounds 3

Needs `trl`, which the `test` extra installs (trl==1.16.0: it changes neither torch nor transformers).

A "round" on both sides is P prompts (data.prompts_per_round or --prompts), 2 samples each (TRL's online DPO
samples two; iterdpo's round.samples_per_prompt is set to 2 here), scored by VADER (the project's own scorer is
TRL's reward function; iterdpo's judge is the config's), one DPO pair per prompt, one optimizer step (learner
micro-batch = TRL batch = P), beta and learning rate from the config, max_new_tokens from generator.max_new_tokens.

- iterdpo: `Orchestrator.run_round` (Ray actors: vLLM generator, judge, DeepSpeed learner), `time/round`, and the
  same without its `evaluate` phase (held-out evaluation + safety suite, which TRL does not do) as the training part.
- trl: one `OnlineDPOTrainer` step (`transformers` generate, reward, policy and reference forward, backward,
  AdamW), timed from `on_step_begin` to `on_step_end`.

The two alternate: each TRL step's `on_step_end` runs one iterdpo round, so both see the same background load.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import header, paired_ratio, print_table, progress, quiet_logs, ratio_line, run_parser  # noqa: E402

ROUND_TARGET = ("<=", 0.5)  # the whole round, evaluation included, at most half of TRL's step
TRAINING_TARGET = ("<=", 0.333)  # the round without its evaluation at most a third


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = run_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="rounds (TRL steps) timed, after --warmup")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="smallest settings: P=4, 2 rounds, no warm-up")
    args = parser.parse_args(argv)
    if args.quick:
        args.prompts, args.rounds, args.warmup = args.prompts or 4, 2, 0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_logs()
    try:
        from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer
    except ImportError:
        print("vs_trl: trl is not installed (pip install -c .venv/constraints-cpu.txt trl==1.16.0)", file=sys.stderr)
        return 2
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from iterdpo.config.loading import load_config
    from iterdpo.data.models import resolve_model
    from iterdpo.rounds.orchestrator import Orchestrator
    from iterdpo.scorers.factory import build_scorer
    from iterdpo.config.scorers import ScorerSpec

    total = args.warmup + args.rounds
    overrides = list(args.overrides) + [f"run.rounds={total}", "round.samples_per_prompt=2"]
    if args.model:
        overrides.append(f"model.path={args.model}")
    if args.prompts:
        overrides += [f"data.prompts_per_round={args.prompts}"]
    cfg = load_config(args.config, overrides)
    prompts_per_round = cfg.data.prompts_per_round
    cfg = load_config(args.config, overrides + [f"learner.micro_batch_size={prompts_per_round}"])

    work = Path(tempfile.mkdtemp(prefix="vs_trl-"))
    orchestrator = Orchestrator(cfg, work / "iterdpo")
    header("vs_trl", {"config": Path(args.config).name, "model": cfg.model.path, "P": prompts_per_round,
                      "samples_per_prompt": 2, "max_new_tokens": cfg.generator.max_new_tokens,
                      "rounds": args.rounds, "warmup": args.warmup, "trl_threads": torch.get_num_threads(),
                      "load": os.getloadavg()})

    vader = build_scorer(ScorerSpec(kind="vader"))

    def vader_reward(prompts, completions, **_) -> list[float]:
        return list(vader(list(prompts), list(completions)))

    vader_reward.__name__ = "vader"
    # Both sides draw from the same training pool (TRL shuffles it; the rounds take it in order).
    train_prompts = [prompt.text for prompt in orchestrator.prompts.train[: prompts_per_round * total]]
    model_dir = resolve_model(orchestrator.weights.pi0)  # the policy's folder on this node
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    trl_args = OnlineDPOConfig(
        output_dir=str(work / "trl"), per_device_train_batch_size=prompts_per_round, gradient_accumulation_steps=1,
        max_steps=total, learning_rate=cfg.round.learning_rate, beta=[cfg.round.beta],
        max_new_tokens=cfg.generator.max_new_tokens, temperature=cfg.generator.temperature, top_p=1.0, top_k=0,
        max_length=cfg.generator.max_model_len, max_grad_norm=cfg.learner.max_grad_norm, use_cpu=True,
        bf16=False, report_to=[], save_strategy="no", logging_steps=1, dataloader_num_workers=0, seed=cfg.run.seed,
        lr_scheduler_type="constant", warmup_steps=0, disable_tqdm=True,
    )
    trainer = OnlineDPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
        reward_funcs=vader_reward, args=trl_args, processing_class=tokenizer,
        train_dataset=Dataset.from_dict({"prompt": train_prompts}),
    )

    trl_seconds: list[float] = []
    rows: list[dict] = []

    class Interleave(TrainerCallback):
        """Times each TRL step, then runs one iterdpo round before the next step starts."""

        def on_step_begin(self, *_, **__):
            self.start = time.perf_counter()

        def on_step_end(self, _args, state, *_, **__):
            trl_seconds.append(time.perf_counter() - self.start)
            row = orchestrator.run_round(state.global_step)
            orchestrator.record(row)
            rows.append(row)
            progress(f"round {state.global_step}: trl {trl_seconds[-1]:.2f} s, iterdpo {row['time/round']:.2f} s")

    trainer.add_callback(Interleave())
    try:
        orchestrator.evaluate_initial_policy()  # what `Orchestrator.run` does first; the gate compares with it
        trainer.train()
    finally:
        orchestrator.shutdown()
        shutil.rmtree(work, ignore_errors=True)

    trl_s = trl_seconds[args.warmup:]
    rounds = [row["time/round"] for row in rows[args.warmup:]]
    # (a round that run.eval_every leaves unevaluated, as in configs/online.yaml, has no evaluate phase)
    training = [row["time/round"] - row.get("time/evaluate", 0.0) for row in rows[args.warmup:]]
    evaluate = [row.get("time/evaluate", 0.0) for row in rows[args.warmup:]]
    print_table(["side", "median s/round", "per round"],
                [["trl OnlineDPOTrainer step", statistics.median(trl_s), " ".join(f"{s:.2f}" for s in trl_s)],
                 ["iterdpo round", statistics.median(rounds), " ".join(f"{s:.2f}" for s in rounds)],
                 ["iterdpo round without evaluate", statistics.median(training),
                  " ".join(f"{s:.2f}" for s in training)],
                 ["iterdpo evaluate", statistics.median(evaluate), " ".join(f"{s:.2f}" for s in evaluate)]])
    print(f"load average after: {os.getloadavg()}")
    print(ratio_line("vs_trl: iterdpo round/trl step time", paired_ratio(rounds, trl_s), ROUND_TARGET))
    print(ratio_line("vs_trl: iterdpo round without evaluate/trl step time", paired_ratio(training, trl_s),
                     TRAINING_TARGET))
    return 0


if __name__ == "__main__":
    sys.exit(main())
