"""Not an actor: the vLLM worker extension every generator's engine loads (`worker_extension_cls`), through which
new weights are loaded in place a bucket at a time: `start_weight_load` once, `load_weight_bucket` per bucket (in any
split: vLLM's layerwise reload finishes each layer once all its weights have come), `finish_weight_load` once (a
layer given no weights keeps the ones it had). An engine in this process hands tensors; an engine whose workers run
in processes of their own (tensor parallelism) hands safetensors bytes, which can cross vLLM's process boundary, and
every worker loads the whole bucket, which vLLM's loader shards for its rank."""

from __future__ import annotations

from typing import Any


class WeightReceiver:
    """Mixed into each vLLM worker: `self` is the worker."""

    def start_weight_load(self) -> None:
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload.layerwise import initialize_layerwise_reload

        with set_current_vllm_config(self.vllm_config):
            initialize_layerwise_reload(self.model_runner.get_model())

    def load_weight_bucket(self, weights: list[tuple[str, Any]] | bytes) -> None:
        import torch
        from vllm.config import set_current_vllm_config

        if isinstance(weights, bytes):
            from safetensors.torch import load

            weights = list(load(weights).items())
        with set_current_vllm_config(self.vllm_config), torch.no_grad():
            self.model_runner.get_model().load_weights(iter(weights))

    def finish_weight_load(self) -> None:
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload.layerwise import finalize_layerwise_reload

        runner = self.model_runner
        with set_current_vllm_config(self.vllm_config):
            finalize_layerwise_reload(runner.get_model(), self.vllm_config.model_config)
        # what vLLM's own `reload_weights` clears after a reload
        runner.reset_lora_state()
        runner.reset_encoder_cache()
        runner.reset_mm_cache()
