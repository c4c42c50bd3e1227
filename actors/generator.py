"""The generator actor: a vLLM engine running in the actor's own process.

On one device the engine runs in the actor's own process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, set in the actor's
runtime env), so new weights are handed to the worker as tensors and loaded in place, a bucket at a time as they
arrive through the object store or over the weight channel (`iterdpo.core.weight_stream`): no restart, no files on
disk, no whole copy of the model. With tensor parallelism its workers run in processes of their own and take the
buckets as safetensors bytes (`actors.generator_worker`).
"""

from __future__ import annotations

from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes

from iterdpo.config.schema import GeneratorConfig, ModelConfig
from iterdpo.core.engine import in_process, seeded_params, start_engine
from iterdpo.data.prompts import engine_input, prompt_length
from iterdpo.data.models import local_path, resolve_model
from iterdpo.core.records import Prompt, Sample, Sampling
from iterdpo.core.weight_stream import (EMBEDDING, TIED_HEAD, Bucket, Channel, bucket_bytes, buckets, join, receive,
                                        size_of)
from iterdpo.data.weight_files import iter_weights


def build_engine(model: ModelConfig, cfg: GeneratorConfig, seed: int) -> Any:
    """The vLLM engine the generator runs (benchmarks build their bare baseline with it too), on the model folder
    `model.path` resolves to on this node, by the rules of `iterdpo.core.engine`."""
    return start_engine(resolve_model(model.path), dtype=cfg.dtype, max_model_len=cfg.max_model_len,
                        kv_cache_gib=cfg.kv_cache_gib, enforce_eager=cfg.enforce_eager,
                        tensor_parallel_size=cfg.tensor_parallel_size, seed=seed,
                        trust_remote_code=model.trust_remote_code)


class Generator:
    def __init__(self, model: ModelConfig, cfg: GeneratorConfig, seed: int) -> None:
        self.cfg = cfg
        self.llm = build_engine(model, cfg, seed)
        hf_config = self.llm.llm_engine.model_config.hf_config
        self.tied_embeddings = bool(getattr(hf_config, "tie_word_embeddings", False))
        self.channel: torch.distributed.Backend | None = None  # the weight channel, once joined
        self.channel_device = torch.device("cpu")  # where its broadcasts land

    def generate(self, prompts: list[Prompt], sampling: Sampling) -> list[Sample]:
        from vllm import SamplingParams

        params = SamplingParams(
            n=sampling.n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_new_tokens,
            logprobs=0,
        )
        from vllm.inputs import TokensPrompt

        tokenizer = self.llm.get_tokenizer()
        given = [engine_input(tokenizer, prompt, sampling.chat) for prompt in prompts]
        requests = [TokensPrompt(prompt_token_ids=g) if isinstance(g, list) else g for g in given]
        outputs = self.llm.generate(requests, seeded_params(params, sampling.seed, len(requests)), use_tqdm=False)
        samples = []
        for index, output in enumerate(outputs):
            for completion in output.outputs:
                token_logprobs = [
                    step[token].logprob for step, token in zip(completion.logprobs, completion.token_ids)
                ]
                samples.append(
                    Sample(
                        prompt_index=index,
                        prompt=prompts[index].text,
                        prompt_ids=list(output.prompt_token_ids),
                        response_ids=list(completion.token_ids),
                        text=completion.text,
                        logprobs=token_logprobs,
                        finished=completion.finish_reason == "stop",
                        messages=prompts[index].messages,
                    )
                )
        return samples

    def prompt_lengths(self, prompts: list[Prompt]) -> list[int]:
        """Token counts of the prompts as the engine will see them."""
        tokenizer = self.llm.get_tokenizer()
        return [prompt_length(tokenizer, prompt) for prompt in prompts]

    def logprobs(self, sequences: list[tuple[list[int], list[int]]]) -> list[list[float]]:
        """Per-token log-probs of each response given its prompt, as the engine computes them."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0)
        requests = [TokensPrompt(prompt_token_ids=list(prompt) + list(response)) for prompt, response in sequences]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        scored = []
        for (prompt, response), output in zip(sequences, outputs):
            ids = output.prompt_token_ids
            steps = output.prompt_logprobs
            scored.append([steps[i][ids[i]].logprob for i in range(len(prompt), len(prompt) + len(response))])
        return scored

    # -- new weights, loaded in place (no restart), a bucket at a time (`actors.generator_worker`) ---------------

    def start_load(self) -> None:
        self.llm.collective_rpc("start_weight_load")

    def load_bucket(self, bucket: Bucket) -> None:
        """One bucket of new weights (Hugging Face names), between `start_load` and `finish_load`."""
        names = {name for name, _ in bucket}
        if self.tied_embeddings and EMBEDDING in names and TIED_HEAD not in names:
            # Once an in-place load has set the output head, a later stream without it (the learner's, or a
            # checkpoint of a tied model, which stores the embedding once) would leave the old head in place.
            bucket = [*bucket, (TIED_HEAD, dict(bucket)[EMBEDDING])]
        if in_process():
            self.llm.collective_rpc("load_weight_bucket", kwargs={"weights": bucket})
        else:  # safetensors stores no tensor twice: a tied head goes as its own copy
            alone: dict[str, torch.Tensor] = {}
            for name, tensor in bucket:
                shared = any(tensor.data_ptr() == other.data_ptr() for other in alone.values())
                alone[name] = tensor.clone() if shared else tensor
            self.llm.collective_rpc("load_weight_bucket", kwargs={"weights": safetensors_bytes(alone)})

    def finish_load(self) -> None:
        self.llm.collective_rpc("finish_weight_load")
        self.llm.reset_prefix_cache()

    # A load always finishes, even one cut short: vLLM's layerwise reload would otherwise stay open, and the next
    # load would count a half-loaded layer's old buffers again. A layer left incomplete is not the learner's: the
    # parity check says so, and the push is made again.

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        """A whole state dict loaded in place, as one bucket."""
        self.start_load()
        try:
            self.load_bucket(list(state.items()))
        finally:
            self.finish_load()

    def load_weights_file(self, path: str, bucket_mb: float) -> None:
        """The weights of a safetensors file, a model folder or a model location (pi0, for scoring under it), read
        and loaded a bucket of `bucket_mb` at a time."""
        self.start_load()
        try:
            for bucket in buckets(iter_weights(local_path(path)), bucket_bytes(bucket_mb)):
                self.load_bucket(bucket)
        finally:
            self.finish_load()

    def join_weight_channel(self, channel: Channel, rank: int) -> None:
        """This engine's place (`rank` >= 1) in the weight channel learner rank 0 broadcasts over."""
        self.channel = join(channel, rank)
        self.channel_device = channel.device

    def receive_weights(self) -> int:
        """A push over the weight channel, each bucket loaded as it comes; returns the bytes received."""
        self.start_load()
        received = 0
        try:
            for bucket in receive(self.channel, self.channel_device):
                self.load_bucket(bucket)
                received += size_of(bucket)
                del bucket  # one bucket in memory at a time
        finally:
            self.finish_load()
        return received
