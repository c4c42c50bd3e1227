"""What a config asks of each GPU, added up before any actor starts: `iterdpo check` prints it per GPU, and a config
that cannot fit is refused (one line naming the largest item on the GPU that overflows).

Actors are laid on GPUs as Ray lays them, in the order they start (engines, judges, learner ranks): an actor asking
for whole GPUs takes free ones, a share of a GPU goes to the first GPU with that much left. Per actor:
- an **engine** (a generator, an LLM judge): its weights in its dtype, split over its `tensor_parallel_size` GPUs;
  its KV cache, `kv_cache_gib` on each of them (given, `iterdpo.core.engine`); `ENGINE_BUFFERS_GIB` for vLLM's
  activation buffer and CUDA graphs;
- a **reward model**: its weights and the activations of one batch;
- a **learner rank**: its model states as DeepSpeed's ZeRO counts them (`model_states`: the same figures as
  `estimate_zero2/3_model_states_mem_needs`, which assume mixed precision; fp32 training has no 16-bit copies), and
  the activations of its share of a micro-batch (`activations`: an estimate, the sequences at `max_model_len`);
- every process on a GPU: `RUNTIME_GIB` for the CUDA context and library workspaces.
The fixed allowances are estimates, stated as such in the plan; the rest follows from the models' configs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from iterdpo.config.schema import Config, LearnerConfig
from iterdpo.config.scorers import engine_options
from iterdpo.core.errors import ConfigError
from iterdpo.data.models import ModelSize, model_size
from iterdpo.training.sequences import CHUNK_TOKENS

GIB = 2**30
RUNTIME_GIB = 0.75  # a process's CUDA context and library workspaces (cuBLAS, NCCL)
ENGINE_BUFFERS_GIB = 1.0  # an engine's activation buffer, sampler and CUDA graphs, beyond weights and KV cache
_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass
class Item:
    owner: str  # "generator[0]", "judge[1] rm", "learner[0]"
    what: str
    gib: float


@dataclass
class Actor:
    name: str
    num_gpus: float
    items: list[Item] = field(default_factory=list)  # per GPU it spans


@dataclass
class GpuPlan:
    gpus: list[list[Item]]
    capacity_gib: float | None  # each GPU's memory; None: unknown here (`run.gpu_memory_gib`)

    def lines(self) -> list[tuple[str, str]]:
        out = []
        for index, items in enumerate(self.gpus):
            total = sum(item.gib for item in items)
            of = f" of {self.capacity_gib:g}" if self.capacity_gib else ""
            parts = "; ".join(f"{item.owner} {item.what} {item.gib:.2f}" for item in items) or "nothing"
            out.append((f"GPU {index}", f"{total:.1f} GiB{of}: {parts}"))
        return out

    def check(self) -> None:
        """A GPU asked for more than it has is one line naming the largest item on it."""
        if not self.capacity_gib:
            return
        for index, items in enumerate(self.gpus):
            total = sum(item.gib for item in items)
            if total > self.capacity_gib:
                largest = max(items, key=lambda item: item.gib)
                raise ConfigError(f"GPU memory: GPU {index} would hold {total:.1f} GiB, more than its "
                                  f"{self.capacity_gib:g} (run.gpu_memory_gib); the largest item is {largest.owner} "
                                  f"{largest.what} ({largest.gib:.1f} GiB)")


def model_states(size: ModelSize, cfg: LearnerConfig, ranks: int) -> dict[str, float]:
    """Bytes of a learner rank's weights, gradients and optimizer states (AdamW), by part.

    With bf16 (DeepSpeed's mixed precision) each trained parameter costs 2 bytes of 16-bit weight and 18 more: a
    16-bit gradient (2), an fp32 gradient (4), an fp32 master weight (4) and Adam's two moments (8); in fp32 it costs
    16: weight (4), gradient (4), moments (8). ZeRO stage 1 shards the master weights and moments over the ranks, 2
    the gradients too, 3 the weights too (a rank then gathers one layer at a time: 4 bytes per parameter of the
    largest layer; its 16-bit gradients are reduced into fp32 partitions as they come, so 16 bytes per parameter are
    sharded in bf16, as DeepSpeed counts them). With LoRA only the adapter trains: the frozen base weights cost their
    16- or 32-bit copy alone.
    """
    total = size.params
    trained = size.lora_per_rank * cfg.lora.rank if cfg.lora.rank else total
    stage = cfg.zero_stage
    weight = 2 if cfg.bf16 else 4
    master, gradients = (4 + 8, 4 if stage == 3 else 2 + 4) if cfg.bf16 else (8, 4)
    parts = {
        "weights": weight * (total / ranks if stage == 3 else total),
        "gradients": gradients * (trained / ranks if stage >= 2 else trained),
        "optimizer states": master * (trained / ranks if stage >= 1 else trained),
    }
    if stage == 3:
        parts["gathered layer"] = 4 * size.largest_layer
    return parts


def activations(size: ModelSize, cfg: LearnerConfig, ranks: int, tokens: int) -> float:
    """Bytes of one training step's activations on a rank: its sequences (two per pair of its share of the
    micro-batch) at `tokens` each. A decoder layer keeps about 8 hidden-sized and 4 MLP-sized values per token
    (norms, attention's inputs and output, the MLP's branches; attention itself by a fused kernel keeps no scores);
    with gradient checkpointing only each layer's input is kept and one layer is recomputed, with its gradients, at
    a time. The head runs over chunks of `CHUNK_TOKENS` (`iterdpo.training.sequences`): one chunk's logits, their
    exponentials and their gradient in fp32."""
    rows = 2 * math.ceil(cfg.micro_batch_size / ranks)
    width = 2 if cfg.bf16 else 4
    per_layer = rows * tokens * (8 * size.hidden + 4 * size.intermediate) * width
    kept = (size.layers * rows * tokens * size.hidden * width + 2 * per_layer if cfg.gradient_checkpointing
            else size.layers * per_layer)
    return kept + 3 * CHUNK_TOKENS * size.vocab * 4


def plan_gpus(cfg: Config, gpu_count: int, capacity_gib: float | None, folder_of: dict[str, Path]) -> GpuPlan:
    """The plan of `cfg` on `gpu_count` GPUs of `capacity_gib` each; `folder_of` maps each model location (the
    policy's, each model-backed scorer's) to its folder on this node (its config is all that is read)."""
    actors = _engines(cfg, folder_of) + _judges(cfg, folder_of) + _learners(cfg, folder_of)
    gpus: list[list[Item]] = [[] for _ in range(gpu_count)]
    free = [1.0] * gpu_count
    for actor in actors:
        if actor.num_gpus <= 0:
            continue
        whole = int(actor.num_gpus) if actor.num_gpus >= 1 else 0
        chosen = ([i for i in range(gpu_count) if free[i] >= 1.0][:whole] if whole else
                  [i for i in range(gpu_count) if free[i] >= actor.num_gpus - 1e-9][:1])
        if len(chosen) < max(whole, 1):
            raise ConfigError(f"GPUs: {actor.name} asks for {actor.num_gpus:g} GPU(s) and none are left of "
                              f"{gpu_count} (lower generator/judge/learner num_gpus or replicas)")
        for index in chosen:
            free[index] -= 1.0 if whole else actor.num_gpus
            gpus[index] += actor.items + [Item(actor.name, "CUDA runtime", RUNTIME_GIB)]
    return GpuPlan([items for items in gpus if items], capacity_gib)


def _engine_items(name: str, size: ModelSize, dtype: str, kv_cache_gib: float, parallel: int, stored: int
                  ) -> list[Item]:
    weights = size.params * _BYTES.get(dtype, stored) / parallel
    return [Item(name, f"weights ({dtype}{f', 1/{parallel}' if parallel > 1 else ''})", weights / GIB),
            Item(name, "KV cache", kv_cache_gib), Item(name, "engine buffers", ENGINE_BUFFERS_GIB)]


def _engines(cfg: Config, folder_of: dict[str, Path]) -> list[Actor]:
    g = cfg.generator
    size = model_size(folder_of[cfg.model.path])
    return [Actor(f"generator[{i}]", g.num_gpus, _engine_items(f"generator[{i}]", size, g.dtype, g.kv_cache_gib,
                                                                g.tensor_parallel_size, 2))
            for i in range(g.replicas)]


def _judges(cfg: Config, folder_of: dict[str, Path]) -> list[Actor]:
    actors = []
    for i in range(cfg.judge.replicas):
        items = []
        for spec in cfg.judge.scorers:
            owner, options = f"judge[{i}] {spec.label}", spec.parsed_options()
            if engine_options(spec):
                size = model_size(folder_of[options.model])
                items += _engine_items(owner, size, options.dtype, options.kv_cache_gib, options.tensor_parallel_size,
                                       2)
            elif spec.kind == "hf_reward_model":
                size = model_size(folder_of[options.path], kind="classifier")
                batch = options.batch_size * options.max_length * (8 * size.hidden + 4 * size.intermediate) * 2
                items += [Item(owner, "weights (bf16)", 2 * size.params / GIB), Item(owner, "activations", batch / GIB)]
        actors.append(Actor(f"judge[{i}]", cfg.judge.num_gpus, items))
    return actors


def _learners(cfg: Config, folder_of: dict[str, Path]) -> list[Actor]:
    learner, ranks = cfg.learner, cfg.learner.replicas
    lora = learner.lora.target_modules if learner.lora.rank else "all-linear"
    size = model_size(folder_of[cfg.model.path], lora_targets=lora)
    items = [Item("learner", part, value / GIB) for part, value in model_states(size, learner, ranks).items()]
    items.append(Item("learner", "activations (estimate)",
                      activations(size, learner, ranks, cfg.generator.max_model_len) / GIB))
    return [Actor(f"learner[{i}]", learner.num_gpus, [Item(f"learner[{i}]", item.what, item.gib) for item in items])
            for i in range(ranks)]
