"""An LLM as the judge: a vLLM engine inside the judge actor rates each (prompt, response) with a rubric.

No free text is parsed. The rubric asks for a rating; the engine runs ONE decode step per sample (greedy,
deterministic) and returns the log-probs of exactly the rating tokens (`SamplingParams.logprob_token_ids`, taken
from the raw distribution). The score is the expected rating under the model's next-token distribution
renormalised over those tokens: sum_r value(r) * p(r) / sum_r p(r). It moves smoothly with the judge's confidence,
where a sampled or greedy digit would jump between integers.

The rubric is the built-in `DEFAULT_RUBRIC` or the user's template file; ``{prompt}`` (the conversation as text)
and ``{response}`` are replaced, nothing else is (braces elsewhere are kept). With a chat template (``chat: auto``
when the judge model has one) the rubric is the user turn and the model's reply starts the rating.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from iterdpo.core.engine import start_engine
from iterdpo.core.errors import ConfigError
from iterdpo.data.models import resolve_model
from iterdpo.core.records import Message

FIELD = "llm_judge"
PLACEHOLDERS = ("{prompt}", "{response}")
DEFAULT_RUBRIC = """You are grading an AI assistant's reply to a user.

[The conversation]
{prompt}

[The assistant's reply]
{response}

How good is the reply: helpful, correct and harmless? Rate it from 1 (very poor) to 5 (excellent).
Answer with a single digit.
Rating: """


def read_template(path: str) -> str:
    """The rubric in `path` ("" for the built-in one), which must hold both placeholders."""
    if not path:
        return DEFAULT_RUBRIC
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{FIELD}.template: file '{path}' not found (expected a text file with {{prompt}} and "
                          "{response})")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{FIELD}.template: '{path}' is not UTF-8 text") from None
    missing = [p for p in PLACEHOLDERS if p not in text]
    if missing:
        raise ConfigError(f"{FIELD}.template: '{path}' lacks {' and '.join(missing)}")
    return text


def conversation_text(messages: list[Message]) -> str:
    """A conversation as the rubric shows it: a lone user turn is its text, longer ones are labelled turns."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


class RatingPrompts:
    """The rubric rendered for the judge model and the ids of the rating tokens: all of the judge but its engine
    (the pre-flight check builds this to prove a configuration before any actor starts)."""

    def __init__(self, folder: Path, template: str, ratings: list[str], chat: str) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
        self.rubric = read_template(template)
        self.chat = chat == "yes" or (chat == "auto" and bool(getattr(self.tokenizer, "chat_template", None)))
        if chat == "yes" and not getattr(self.tokenizer, "chat_template", None):
            raise ConfigError(f"{FIELD}.chat: the judge model in '{folder}' has no chat template")
        self.token_ids = []
        for rating in ratings:
            ids = self.tokenizer.encode(rating, add_special_tokens=False)
            if len(ids) != 1:
                raise ConfigError(f"{FIELD}.ratings: '{rating}' is {len(ids)} tokens for the judge model's tokenizer, "
                                  "expected one (choose ratings that are single tokens, e.g. digits)")
            self.token_ids.append(ids[0])
        self.values = [float(rating) for rating in ratings]

    def render(self, conversation: list[Message], response: str) -> str:
        text = self.rubric.replace("{prompt}", conversation_text(conversation)).replace("{response}", response)
        if not self.chat:
            return text
        return self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                  add_generation_prompt=True)

    def expected_rating(self, logprobs: dict[int, Any]) -> float:
        """sum_r value(r) p(r), p renormalised over the rating tokens (from their log-probs, by token id)."""
        raw = [logprobs[token].logprob for token in self.token_ids]
        top = max(raw)
        weights = [math.exp(value - top) for value in raw]
        return sum(value * weight for value, weight in zip(self.values, weights)) / sum(weights)


class LLMJudgeScorer:
    takes_conversations = True
    exclusive = True  # one engine: never two calls at once (`iterdpo.scorers.robust`)

    def __init__(self, options: Any) -> None:
        folder = resolve_model(options.model, f"{FIELD}.model")
        self.prompts = RatingPrompts(folder, options.template, options.ratings, options.chat)
        self.llm = start_engine(folder, dtype=options.dtype, max_model_len=options.max_model_len,
                                kv_cache_gib=options.kv_cache_gib, enforce_eager=options.enforce_eager,
                                tensor_parallel_size=options.tensor_parallel_size, seed=0, trust_remote_code=False)

    def __call__(self, prompts: list[str], responses: list[str],
                 conversations: list[list[Message]] | None = None) -> list[float]:
        from vllm import SamplingParams

        conversations = conversations or [[{"role": "user", "content": p}] for p in prompts]
        requests = [self.prompts.render(turns, response) for turns, response in zip(conversations, responses)]
        params = SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=self.prompts.token_ids)
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        return [self.prompts.expected_rating(output.outputs[0].logprobs[0]) for output in outputs]
