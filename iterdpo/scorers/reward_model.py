"""A Hugging Face sequence-classification model as a judge (reward models, classifiers): a local folder or a Hub id."""

from __future__ import annotations

from typing import Any

from iterdpo.core.devices import device_kind
from iterdpo.core.errors import ConfigError
from iterdpo.data.models import resolve_model
from iterdpo.core.records import Message, conversations_of

FIELD = "hf_reward_model.path"


def label_index(config: Any, label: int | str | None) -> int | None:
    """The output a score reads: None for a single-logit reward model, else the index of `label`."""
    num_labels = config.num_labels
    if num_labels == 1:
        return None
    if label is None:
        raise ConfigError(f"hf_reward_model.label: the model has {num_labels} labels "
                          f"{list(config.id2label.values())}; name the one to score")
    if isinstance(label, str):
        if label not in config.label2id:
            raise ConfigError(f"hf_reward_model.label: '{label}' is not one of {list(config.label2id)}")
        return int(config.label2id[label])
    if not 0 <= label < num_labels:
        raise ConfigError(f"hf_reward_model.label: index {label} out of range for {num_labels} labels")
    return label


class HFRewardModelScorer:
    """Score = the logit when the model has one label, else the softmax probability of ``label``.

    ``input_format``: "chat" renders the prompt's conversation followed by the response as the assistant's turn
    with the tokenizer's chat template; "concat" scores prompt + response as one text (continuations); "response"
    the response alone; "auto" is "chat" when the tokenizer has a chat template, else "concat". Never runs remote
    code. The model runs on this actor's accelerator when it has one (bf16 there where supported), else on the CPU.
    """

    takes_conversations = True
    exclusive = True  # one model on one device: never two calls at once (`iterdpo.scorers.robust`)

    def __init__(self, path: str, label: int | str | None = None, batch_size: int = 8, max_length: int = 512,
                 input_format: str = "auto", device: str = "auto") -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        folder = resolve_model(path, FIELD, kind="classifier")
        self.device = device_kind() if device == "auto" else device  # the GPUs Ray gave this actor
        self.tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
        dtype = torch.float32 if self.device == "cpu" else "auto"
        self.model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=False, dtype=dtype)
        self.model.to(self.device).eval()
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:  # needed to find each row's last token in a padded batch
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.label_index = label_index(self.model.config, label)
        self.chat = input_format == "chat" or (input_format == "auto" and bool(self.tokenizer.chat_template))
        self.input_format = "chat" if self.chat else ("concat" if input_format == "auto" else input_format)
        self.batch_size, self.max_length = batch_size, max_length

    def _texts(self, prompts: list[str], responses: list[str], conversations: list[list[Message]] | None
               ) -> list[str]:
        if self.input_format == "chat":
            conversations = conversations_of(prompts, conversations)
            return [self.tokenizer.apply_chat_template([*turns, {"role": "assistant", "content": r}], tokenize=False)
                    for turns, r in zip(conversations, responses)]
        if self.input_format == "concat":
            return [p + r for p, r in zip(prompts, responses)]
        return list(responses)

    def __call__(self, prompts: list[str], responses: list[str],
                 conversations: list[list[Message]] | None = None) -> list[float]:
        import torch

        texts, scores = self._texts(prompts, responses, conversations), []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[start : start + self.batch_size], padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt",
                                   add_special_tokens=not self.chat)  # a chat template adds its own
            with torch.inference_mode():
                logits = self.model(**batch.to(self.device)).logits.float()
            if self.label_index is None:
                scores += logits[:, 0].tolist()
            else:
                scores += logits.softmax(dim=-1)[:, self.label_index].tolist()
        return scores
