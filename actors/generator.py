"""The generator actor: a vLLM engine running in the actor's own process.

On one device the engine runs in the actor's own process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, set in the actor's
runtime env), so new weights are handed to the worker as tensors and loaded in place by vLLM's ``reload_weights``:
no restart, no files on disk. With tensor parallelism its workers run in processes of their own and take the weights
as safetensors bytes (`actors.generator_worker`).
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
from iterdpo.data.weight_files import read_weights


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

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        """Loads new weights into the running engine, in place (no restart)."""
        if self.tied_embeddings and "lm_head.weight" not in state and "model.embed_tokens.weight" in state:
            # Once an in-place reload has set the output head, a later state without it (a checkpoint of a tied
            # model stores the embedding once) would leave the old head in place.
            state = {**state, "lm_head.weight": state["model.embed_tokens.weight"]}
        if in_process():
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(state.items())})
        else:  # safetensors stores no tensor twice: a tied head goes as its own copy
            alone: dict[str, torch.Tensor] = {}
            for name, tensor in state.items():
                shared = any(tensor.data_ptr() == other.data_ptr() for other in alone.values())
                alone[name] = tensor.clone() if shared else tensor
            self.llm.collective_rpc("load_weight_bytes", args=(safetensors_bytes(alone),))
        self.llm.reset_prefix_cache()

    def load_weights_file(self, path: str) -> None:
        """`load_weights` from a safetensors file, a model folder or a model location (pi0 as best-of-n's
        reference)."""
        self.load_weights(read_weights(local_path(path)))
