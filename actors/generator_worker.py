"""Not an actor: the vLLM worker extension a generator's engine loads when it runs its workers in processes of
their own (tensor parallelism, `iterdpo.core.engine`). Tensors cannot cross vLLM's process boundary; safetensors
bytes can, and every worker loads the whole state, which vLLM's loader shards for its rank."""

from __future__ import annotations


class WeightReceiver:
    """Mixed into each vLLM worker (`worker_extension_cls`): `self` is the worker."""

    def load_weight_bytes(self, data: bytes) -> None:
        from safetensors.torch import load

        self.model_runner.reload_weights(weights_iterator=iter(load(data).items()))
