"""The learner actor: a DeepSpeed engine on a transformers causal LM.

The reference is never a second resident model. At the start of a round, `reference_logprobs` scores the round's
pairs with the weights the round starts from; those numbers are all DPO needs of the reference, so the reference is
refreshed every round by construction and costs no memory beyond two floats per pair.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import statistics
import time
from typing import Any, Iterator

import torch

from iterdpo.training import lora
from iterdpo.training.process_group import Rank, process_group_env
from iterdpo.training.weight_reading import engine_buckets, weights_in_order
from iterdpo.config.schema import LearnerConfig, ModelConfig, RoundConfig
from iterdpo.training.losses import LOSSES, LossInputs, LossParams, TrainingHook, preference_loss
from iterdpo.data.models import local_path, resolve_model
from iterdpo.core.records import Pair, PairLogps, PolicyState, TrainResult, pair_sequences
from iterdpo.core.seeds import epoch_seed
from iterdpo.training.sequences import ResponseLogprobs, Sequence, TokenBatch, collate, per_token_lists
from iterdpo.core.sharding import rank_share
from iterdpo.core import weight_stream
from iterdpo.data.weight_files import WeightsDigest, read_weights

# Weights an actor is given: a model location (pi0: a Hub id, `builtin:` name or folder, resolved on this node) or
# weights that came through Ray (a checkpoint or an EMA the driver read from its run directory).
WeightsSource = str | PolicyState


def _tensors(source: WeightsSource) -> dict[str, torch.Tensor]:
    return source.tensors if isinstance(source, PolicyState) else read_weights(local_path(source))


class Learner:
    def __init__(self, model: ModelConfig, cfg: LearnerConfig, seed: int, rank: Rank | None = None) -> None:
        process_group_env(rank)
        import deepspeed
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.cfg = cfg
        torch.set_num_threads(cfg.torch_threads)
        torch.manual_seed(seed)
        self.model_dir = resolve_model(model.path)  # this node's copy (a Hub id is fetched at its pinned commit)
        tokenizer = AutoTokenizer.from_pretrained(self.model_dir, trust_remote_code=model.trust_remote_code)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        # fp32 master weights: with learner.bf16 DeepSpeed runs the forward and backward passes in bf16.
        policy = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32,
                                                      trust_remote_code=model.trust_remote_code)
        if cfg.gradient_checkpointing:
            # Activations are recomputed in the backward pass instead of kept: the same loss and gradients for
            # a fraction of the memory. The non-reentrant form also works with frozen (LoRA) base weights.
            policy.config.use_cache = False
            policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model = policy
        # With LoRA only the adapter trains and has optimizer state; the base weights are frozen.
        self.adapter = (lora.Adapter(model, cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.target_modules)
                        if cfg.lora.rank else None)
        if self.adapter is not None:
            model = self.adapter.model
        self.policy = model  # the causal LM (with LoRA: the peft model), whose weights every weight call reads
        deepspeed.init_distributed()  # gloo on CPU, nccl on CUDA: DeepSpeed's accelerator picks
        self.rank, self.world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        trainable = [param for param in model.parameters() if param.requires_grad]
        # The learning rate is a per-round setting (a schedule may change it): `_start_round` sets it along with
        # the optimizer's fresh state. Until a round starts it is 0, so no step can move the weights.
        optimizer = torch.optim.AdamW(trainable, lr=0.0, weight_decay=cfg.weight_decay)
        ds_config = {
            "train_micro_batch_size_per_gpu": -(-cfg.micro_batch_size // self.world_size),
            "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
            "gradient_clipping": cfg.max_grad_norm,
            "zero_optimization": {"stage": cfg.zero_stage},
            "bf16": {"enabled": cfg.bf16, "check_grad_overflow": True},
            "steps_per_print": 10**9,
        }
        # The engine's module computes response log-probs in bounded memory (`iterdpo.training.sequences`): every
        # pass, scoring or training, goes through the engine's forward.
        scorer = ResponseLogprobs(model)
        if not scorer.scorer.chunked:
            logging.getLogger("iterdpo").warning(
                "learner: %s's forward does more than head(decoder(x)); its log-probs come from the full "
                "[rows, T, vocab] logits (more memory)", model.config.architectures)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(model=scorer, optimizer=optimizer, config=ds_config)
        if self.world_size == 1 and cfg.zero_stage == 0:
            # A lone rank's all-reduce averages over itself: DeepSpeed would still flatten every gradient into
            # buckets and copy it back after each backward pass.
            self.engine.enable_backward_allreduce = False
        self.device = self.engine.device
        self._hash: str | None = None  # the weights' hash, until they change (`weights_hash`)
        self._channel_store: torch.distributed.Store | None = None  # a weight channel's rendezvous, served by rank 0
        self._channel: torch.distributed.Backend | None = None
        self._channel_device = self.device

    # -- scoring -------------------------------------------------------------------------------------------------

    def _logprobs(self, batch: TokenBatch) -> torch.Tensor:
        """[B, T - 1] log-prob of each response token of `batch` under the current weights (the engine's forward)."""
        return self.engine(batch.input_ids, batch.attention_mask, batch.response_mask)

    def _score(self, sequences: list[Sequence]) -> list[list[float]]:
        """Per-token log-probs of each response, in micro-batches of a training step's rows, made of sequences of
        like lengths (little padding: 8% less time on the default task's held-out samples), in the given order."""
        rows = 2 * self.cfg.micro_batch_size
        by_length = sorted(range(len(sequences)), key=lambda i: len(sequences[i][0]) + len(sequences[i][1]))
        scored: list[list[float]] = [[] for _ in sequences]
        with torch.no_grad():
            for start in range(0, len(by_length), rows):
                chunk = by_length[start : start + rows]
                batch = collate([sequences[i] for i in chunk], self.pad_id, self.device)
                for index, row in zip(chunk, per_token_lists(self._logprobs(batch), batch)):
                    scored[index] = row
        return scored

    def _pair_logps(self, pairs: list[Pair]) -> PairLogps:
        scored = self._score(pair_sequences(pairs))
        return PairLogps.from_tokens(scored[: len(pairs)], scored[len(pairs) :], self.weights_hash())

    def reference_logprobs(self, pairs: list[Pair], weights: WeightsSource | None = None) -> PairLogps:
        """Summed log-probs of chosen and rejected responses under the current (round-start) weights, or under the
        weights `weights` (pi0, an EMA of past policies)."""
        with self._weights(weights):
            return self._pair_logps(pairs)

    def logprobs(self, sequences: list[Sequence], weights: WeightsSource | None = None) -> list[list[float]]:
        """Per-token log-probs of each response, under the current weights (the weight-sync parity check) or under
        the weights `weights` (pi0, for the held-out KL to it)."""
        with self._weights(weights):
            return self._score(sequences)

    @contextlib.contextmanager
    def _weights(self, weights: WeightsSource | None) -> Iterator[None]:
        """`weights` swapped in for the block, in eval mode; None keeps the current ones. No second model stays
        resident."""
        self.engine.eval()
        if weights is None:
            yield
        elif self.adapter is not None:
            current_hash, self._hash = self._hash, None
            with self.adapter.swapped(_tensors(weights)):
                yield
            self._hash = current_hash
        else:
            current, current_hash = self.export_weights(), self._hash
            self._copy_into_module(_tensors(weights))
            try:
                yield
            finally:
                self._copy_into_module(current)
                self._hash = current_hash  # the same weights as before the block

    # -- training ------------------------------------------------------------------------------------------------

    def train(self, pairs: list[Pair], reference: PairLogps, settings: RoundConfig, seed: int,
              max_refused_steps: int, rescore: bool = True) -> TrainResult:
        """Trains `settings.loss` on the round's pairs for `settings.epochs`, then scores the pairs again; without
        `rescore` the result's `after` carries only the trained weights' hash (the engines score the pairs).

        A step whose loss or gradient is not finite is refused (not applied) and counted; past `max_refused_steps`
        training stops and the result says it diverged: the caller restores the round's start weights."""
        steps = self.start_round(settings, len(pairs))
        order = list(range(len(pairs)))
        history: list[dict[str, float]] = []
        refused = 0
        for epoch in range(settings.epochs):
            random.Random(epoch_seed(seed, epoch)).shuffle(order)
            for start in range(0, len(order), self.cfg.micro_batch_size):
                batch = order[start : start + self.cfg.micro_batch_size]
                index, share = rank_share(batch, self.rank, self.world_size)
                step = steps.step([pairs[i] for i in index], index, reference, share)
                if step is None:
                    refused += 1
                    if refused > max_refused_steps:
                        return TrainResult(metrics={"train/refused_steps": float(refused), "loss/mean": math.nan},
                                           after=None, refused_steps=refused)
                else:
                    history.append(step)
        metrics: dict[str, Any] = {f"train/{key}": statistics.fmean(h[key] for h in history) for key in
                                   (history[0] if history else {})}
        metrics["train/steps"] = float(len(history))
        metrics["train/refused_steps"] = float(refused)
        metrics.update(steps.hook.metrics())
        metrics["loss/mean"] = metrics.get("train/loss", float("nan"))
        self.engine.eval()
        rescoring = time.perf_counter()
        after = self._pair_logps(pairs) if rescore else PairLogps([], [], weights_hash=self.weights_hash())
        metrics["time/train_rescore"] = time.perf_counter() - rescoring  # the drift metrics' pass, outside the steps
        return TrainResult(metrics=metrics, after=after, refused_steps=refused, losses=[step["loss"] for step in history])

    def start_round(self, settings: RoundConfig, num_pairs: int) -> RoundSteps:
        """The optimizer steps of a round of `num_pairs` pairs (what `train` runs; a benchmark times one). Each round
        is a fresh preference problem against a new reference: Adam's moments start from zero at the round's
        learning rate, which also makes a round depend only on its start weights and seed (what resuming a run
        relies on); the loss's training-time state starts with it."""
        inner = self.optimizer
        while hasattr(inner, "optimizer"):
            inner = inner.optimizer
        inner.state.clear()
        self._hash = None  # the round's steps change the weights
        for group in self.optimizer.param_groups:
            group["lr"] = settings.learning_rate
        self.engine.train()
        params = settings.params()
        return RoundSteps(self, settings.loss, params,
                          LOSSES[settings.loss].training_hook(self.policy, num_pairs, params, self.device))

    def _all_ranks(self, flag: bool) -> bool:
        """True when `flag` holds on every rank of the group."""
        value = torch.tensor([float(flag)], device=self.device)
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MIN)
        return bool(value.item())

    def _group_mean(self, metrics: dict[str, float], share: float) -> dict[str, float]:
        """The global batch's metrics from each rank's means over its share (weighted by `share`)."""
        keys = sorted(metrics)
        values = torch.tensor([metrics[key] * share if share else 0.0 for key in keys], dtype=torch.float64,
                              device=self.device)
        torch.distributed.all_reduce(values)
        return {key: value / self.world_size for key, value in zip(keys, values.tolist())}

    def _gradients_finite(self) -> bool:
        """Without ZeRO the gradients sit in `.grad` and nothing checks them before the update; ZeRO (and bf16 with
        check_grad_overflow) checks the global norm itself inside `step()`."""
        if self.cfg.zero_stage > 0:
            return True
        grads = [p.grad for p in self.policy.parameters() if p.grad is not None]
        return not grads or bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())

    # -- weights -------------------------------------------------------------------------------------------------

    def _weights_in_order(self, for_engine: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
        return weights_in_order(self.policy, self.adapter, self.cfg.zero_stage, for_engine)

    def export_weights(self) -> dict[str, torch.Tensor]:
        """A CPU copy of the full state dict with Hugging Face names (with LoRA: the merged weights), for a
        checkpoint or the EMA; a push to the engines streams instead (`stream_weights`, `broadcast_weights`)."""
        return {name: tensor.to("cpu", copy=True) for name, tensor in self._weights_in_order()}

    def _engine_buckets(self, bucket_mb: float, device: torch.device) -> Iterator[weight_stream.Bucket]:
        released = self.cfg.zero_stage == 3 and device.type == self.device.type  # a gathered tensor, not a copy
        return engine_buckets(self._weights_in_order(for_engine=True), self.rank, bucket_mb, device, released)

    def stream_weights(self, bucket_mb: float) -> Iterator[weight_stream.Bucket]:
        """A push through the object store (a Ray streaming generator): rank 0 yields the engines' buckets, each
        stored once and read by every engine; the other ranks take part in ZeRO-3's gathers and yield none."""
        yield from self._engine_buckets(bucket_mb, torch.device("cpu"))

    def open_weight_channel(self, engines: int, nccl: bool) -> weight_stream.Channel:
        """Rank 0 serves the rendezvous of a weight channel to `engines` engines (then every member joins at once)."""
        self._channel_store, channel = weight_stream.open_store(engines + 1, nccl)
        return channel

    def join_weight_channel(self, channel: weight_stream.Channel) -> None:
        self._channel = weight_stream.join(channel, 0, self._channel_store)
        self._channel_device = channel.device  # NCCL sends from the GPU itself

    def broadcast_weights(self, bucket_mb: float) -> int:
        """A push over the weight channel: rank 0 broadcasts the engines' buckets; returns the bytes sent (0 on the
        other ranks, which only take part in the gathers)."""
        stream = self._engine_buckets(bucket_mb, self._channel_device)
        if self.rank != 0:
            return sum(1 for _ in stream)  # makes no bucket: 0
        try:
            return weight_stream.send(self._channel, stream, self._channel_device)
        finally:
            for _ in stream:  # a failed send still goes through every gather, or the other ranks would hang in one
                pass

    def checkpoint(self) -> PolicyState:
        """The policy as it travels to the driver, which writes the run directory (a checkpoint): the full state
        (with LoRA, the merge, and the adapter itself). In a learner group rank 0 returns the weights; the other
        ranks take part in gathering ZeRO-3 shards and return the hash alone."""
        if self.rank != 0:
            for _ in self._weights_in_order():  # ZeRO-3's gathers need every rank; only rank 0 keeps a copy
                pass
            return PolicyState({}, self.weights_hash())
        return PolicyState(self.export_weights(), self.weights_hash(),
                           self.adapter.saved() if self.adapter is not None else None)

    def load_weights(self, source: WeightsSource) -> str:
        """Makes `source`'s weights the policy's (a rollback, a resume, a restart): the module and the optimizer's
        own fp32 copies both. With LoRA, a checkpoint's adapter goes back over the same base weights; weights
        without one become the base under the initial adapter. Returns the hash of the weights now in place."""
        if self.adapter is not None and isinstance(source, PolicyState) and source.adapter is not None:
            self._hash = None
            self.adapter.restore(source.adapter)
        else:
            self._copy_into_module(_tensors(source))
        if hasattr(self.optimizer, "refresh_fp32_params"):
            self.optimizer.refresh_fp32_params()  # ZeRO keeps master copies that the next step would write back
        return self.weights_hash()

    def update_ema(self, source: WeightsSource, rate: float) -> PolicyState:
        """rate * ema + (1 - rate) * policy, where ema is `source` (the previous EMA, or pi0 to start), for the
        driver to write; the other ranks of a learner group return its hash alone."""
        ema = _tensors(source)
        blended: dict[str, torch.Tensor] = {}
        digest = WeightsDigest()
        for name, tensor in self._weights_in_order():  # one weight at a time; only rank 0 keeps the blend
            if name in ema:
                value = rate * ema[name] + (1.0 - rate) * tensor.to("cpu")
                digest.update(name, value)
                if self.rank == 0:
                    blended[name] = value
        return PolicyState(blended, digest.hexdigest())

    def _copy_into_module(self, state: dict[str, torch.Tensor]) -> None:
        self._hash = None
        if self.adapter is not None:
            self.adapter.load_base(state)
            return
        module = self.policy
        params = dict(module.named_parameters())
        missing = sorted(set(params) - set(state))
        if missing:
            raise ValueError(f"weights file lacks {len(missing)} parameters, e.g. {missing[0]}")
        gathered = contextlib.nullcontext()
        if self.cfg.zero_stage == 3:
            import deepspeed

            gathered = deepspeed.zero.GatheredParameters(list(params.values()), modifier_rank=0)
        with gathered, torch.no_grad():
            for name, param in params.items():
                param.copy_(state[name].to(param.device, param.dtype))

    def weights_hash(self) -> str:
        """The hash of `export_weights()`'s state (`hash_state`), read one weight at a time in place (no copy of the
        model), once per change of the weights: an optimizer step, `_copy_into_module` and an adapter's restore forget it."""
        if self._hash is None:
            digest = WeightsDigest()
            for name, tensor in self._weights_in_order():
                digest.update(name, tensor)
            self._hash = digest.hexdigest()
        return self._hash


class RoundSteps:
    """A round's optimizer steps on a learner (`Learner.start_round`): the round's loss and its parameters, and the
    loss's training-time state, called around every step."""

    def __init__(self, learner: Learner, loss: str, params: LossParams, hook: TrainingHook) -> None:
        self.learner, self.loss, self.params, self.hook = learner, loss, params, hook

    def step(self, batch: list[Pair], index: list[int], reference: PairLogps, share: float = 1.0
             ) -> dict[str, float] | None:
        """One optimizer step on this rank's `share` of the global batch (`batch`: the pairs at positions `index` of
        the round's); its metrics, or None when it was refused for a non-finite loss or gradient (on any rank)."""
        learner, hook = self.learner, self.hook
        tokens = collate([(p.prompt_ids, p.chosen_ids) for p in batch] +
                         [(p.prompt_ids, p.rejected_ids) for p in batch], learner.pad_id, learner.device)
        logps = learner._logprobs(tokens).sum(-1)

        def column(values) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32, device=learner.device)

        inputs = LossInputs(
            policy_chosen_logps=logps[: len(batch)],
            policy_rejected_logps=logps[len(batch) :],
            ref_chosen_logps=column([reference.chosen[i] for i in index]),
            ref_rejected_logps=column([reference.rejected[i] for i in index]),
            chosen_lengths=column([len(p.chosen_ids) for p in batch]),
            rejected_lengths=column([len(p.rejected_ids) for p in batch]),
            chosen_scores=column([p.chosen_score for p in batch]),
            rejected_scores=column([p.rejected_score for p in batch]),
            chosen_safety=column([p.chosen_safety for p in batch]),
            rejected_safety=column([p.rejected_safety for p in batch]),
            **hook.batch_inputs(index),
        )
        out = preference_loss(self.loss, inputs, self.params)
        penalty, penalty_metrics = hook.penalty(tokens)
        loss = out.loss if penalty is None else out.loss + penalty
        out.metrics.update(penalty_metrics)
        finite = bool(torch.isfinite(loss.detach())) or share == 0.0
        if learner.world_size > 1:
            finite = learner._all_ranks(finite)
            out.metrics = learner._group_mean(out.metrics, share)
            loss = loss * share
        if not finite:
            return None
        learner.engine.backward(loss)
        if not learner._gradients_finite():
            learner.engine.zero_grad()
            hook.step_refused()
            return None
        boundary = learner.engine.is_gradient_accumulation_boundary()
        learner.engine.step()
        learner._hash = None  # the weights may have moved
        if boundary and not learner.engine.was_step_applied():
            hook.step_refused()  # ZeRO found a non-finite gradient norm and skipped the update
            return None
        hook.step_applied()
        return out.metrics
