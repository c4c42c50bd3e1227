"""Run as a script by tests/test_engine_apart_on_cpu.py: a generator whose engine runs its worker in a process of
its own (`VLLM_ENABLE_V1_MULTIPROCESSING=1`, what tensor parallelism takes on a GPU) takes new weights as safetensors
bytes through the worker extension (`actors.generator_worker`). Prints one JSON line."""

import json
import os
import sys

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1"  # before vLLM is imported: the engine runs apart


def main() -> int:
    import torch

    from actors.generator import Generator
    from iterdpo.config.schema import GeneratorConfig, ModelConfig
    from iterdpo.core.engine import in_process
    from iterdpo.data.models import resolve_model
    from iterdpo.data.weight_files import read_weights

    model = ModelConfig(path=sys.argv[1])
    engine = Generator(model, GeneratorConfig(kv_cache_gib=0.25, max_model_len=128, max_new_tokens=16), seed=0)
    probe = [([5, 6, 7, 8], [9, 10, 11, 12, 13, 14]), ([20, 21], [22, 23, 24])]
    original = read_weights(resolve_model(sys.argv[1]))
    before = engine.logprobs(probe)
    generator = torch.Generator().manual_seed(0)
    engine.load_weights({name: t + 0.05 * torch.randn(t.shape, generator=generator) for name, t in original.items()})
    moved = engine.logprobs(probe)
    engine.load_weights(original)
    back = engine.logprobs(probe)
    gap = max(abs(a - b) for x, y in zip(before, moved) for a, b in zip(x, y))
    print(json.dumps({"in_process": in_process(), "moved_by": gap, "back_exactly": back == before}), flush=True)
    engine.llm.llm_engine.engine_core.shutdown()  # the worker process stopped and joined, not left to exit
    return 0


if __name__ == "__main__":
    code = main()
    # Past this point only the interpreter's own teardown is left, and vLLM's client threads die in it at random
    # ("terminate called without an active exception", SIGABRT, once in a CI run): the result is printed already.
    os._exit(code)
