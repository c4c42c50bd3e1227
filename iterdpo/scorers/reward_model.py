"""A Hugging Face sequence-classification model on disk as a judge (reward models, classifiers)."""

from __future__ import annotations

import json
from pathlib import Path

from iterdpo.errors import ConfigError


def pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _check_folder(path: str) -> Path:
    folder = Path(path)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"hf_reward_model.path: '{path}' has no config.json "
                          f"(expected a Hugging Face AutoModelForSequenceClassification folder)")
    try:
        architectures = json.loads(config_file.read_text(encoding="utf-8")).get("architectures") or []
    except (ValueError, UnicodeDecodeError):
        raise ConfigError(f"hf_reward_model.path: '{config_file}' is not valid JSON") from None
    if architectures and not any(name.endswith("ForSequenceClassification") for name in architectures):
        raise ConfigError(f"hf_reward_model.path: '{path}' is a {architectures[0]}, "
                          f"expected a *ForSequenceClassification model")
    return folder


class HFRewardModelScorer:
    """Score = the logit when the model has one label, else the softmax probability of ``label``.

    ``input_format``: "chat" renders (prompt, response) as a user/assistant conversation with the tokenizer's chat
    template; "concat" scores prompt + response as one text (continuations); "response" the response alone; "auto"
    is "chat" when the tokenizer has a chat template, else "concat". Never runs remote code.
    """

    def __init__(self, path: str, label: int | str | None = None, batch_size: int = 8, max_length: int = 512,
                 input_format: str = "auto", device: str = "auto") -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        folder = _check_folder(path)
        self.device = pick_device() if device == "auto" else device
        self.tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
        dtype = torch.float32 if self.device == "cpu" else "auto"
        self.model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=False, dtype=dtype)
        self.model.to(self.device).eval()
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:  # needed to find each row's last token in a padded batch
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.label_index = self._label_index(label)
        self.chat = input_format == "chat" or (input_format == "auto" and bool(self.tokenizer.chat_template))
        self.input_format = "chat" if self.chat else ("concat" if input_format == "auto" else input_format)
        self.batch_size, self.max_length = batch_size, max_length

    def _label_index(self, label: int | str | None) -> int | None:
        num_labels = self.model.config.num_labels
        if num_labels == 1:
            return None
        if label is None:
            raise ConfigError(f"hf_reward_model.label: the model has {num_labels} labels "
                              f"{list(self.model.config.id2label.values())}; name the one to score")
        if isinstance(label, str):
            if label not in self.model.config.label2id:
                raise ConfigError(f"hf_reward_model.label: '{label}' is not one of "
                                  f"{list(self.model.config.label2id)}")
            return int(self.model.config.label2id[label])
        if not 0 <= label < num_labels:
            raise ConfigError(f"hf_reward_model.label: index {label} out of range for {num_labels} labels")
        return label

    def _texts(self, prompts: list[str], responses: list[str]) -> list[str]:
        if self.input_format == "chat":
            return [self.tokenizer.apply_chat_template(
                        [{"role": "user", "content": p}, {"role": "assistant", "content": r}], tokenize=False)
                    for p, r in zip(prompts, responses)]
        if self.input_format == "concat":
            return [p + r for p, r in zip(prompts, responses)]
        return list(responses)

    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        import torch

        texts, scores = self._texts(prompts, responses), []
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
