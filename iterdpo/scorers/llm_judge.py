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
import re
from pathlib import Path
from typing import Any

from iterdpo.core.engine import start_engine
from iterdpo.core.errors import ConfigError
from iterdpo.data.models import resolve_model
from iterdpo.core.records import Message, conversations_of

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


def read_template(path: str, default: str = DEFAULT_RUBRIC, placeholders: tuple[str, ...] = PLACEHOLDERS,
                  field: str = FIELD) -> str:
    """The template in `path` ("" for `default`), which must hold every placeholder."""
    if not path:
        return default
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{field}.template: file '{path}' not found (expected a text file with "
                          f"{' and '.join(placeholders)})")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{field}.template: '{path}' is not UTF-8 text") from None
    missing = [p for p in placeholders if p not in text]
    if missing:
        raise ConfigError(f"{field}.template: '{path}' lacks {' and '.join(missing)}")
    return text


def fill(template: str, values: dict[str, str]) -> str:
    """`template` with each ``{name}`` of `values` replaced (one pass, so a response holding "{response_b}" stays
    as written); other braces are kept."""
    pattern = re.compile("|".join(re.escape("{" + name + "}") for name in values))
    return pattern.sub(lambda match: values[match.group(0)[1:-1]], template)


def single_token(word: str, ids: list[int], field: str) -> int:
    """The one token id of `word` (`ids`, as the judge model's tokenizer spells it); more is a ConfigError."""
    if len(ids) != 1:
        raise ConfigError(f"{field}: '{word}' is {len(ids)} tokens for the judge model's tokenizer, expected one "
                          "(choose single tokens, e.g. digits)")
    return int(ids[0])


def single_token_ids(tokenizer: Any, words: list[str], field: str) -> list[int]:
    """The token id of each word, each of which must be one token for `tokenizer`."""
    return [single_token(word, tokenizer.encode(word, add_special_tokens=False), field) for word in words]


def normalised(logprobs: list[float]) -> list[float]:
    """The probabilities of a few tokens renormalised over them (from their log-probs; -inf for an absent one)."""
    top = max(logprobs)
    weights = [math.exp(value - top) for value in logprobs]
    return [weight / sum(weights) for weight in weights]


def expected_value(values: list[float], probs: list[float]) -> float:
    return math.fsum(value * prob for value, prob in zip(values, probs))


def conversation_text(messages: list[Message]) -> str:
    """A conversation as the rubric shows it: a lone user turn is its text, longer ones are labelled turns."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


def rubric_text(rubric: str, conversation: list[Message], response: str) -> str:
    """A rating rubric filled with one conversation and one response."""
    return fill(rubric, {"prompt": conversation_text(conversation), "response": response})


class ChoicePrompts:
    """A judge model's tokenizer: whether it reads the judge's text as a chat turn, and the ids of the answer tokens
    (ratings, or the two choices of a comparison), each of which must be one token."""

    def __init__(self, folder: Path, answers: list[str], chat: str, field: str, answers_field: str) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        if chat == "yes" and not has_template:
            raise ConfigError(f"{field}.chat: the judge model in '{folder}' has no chat template")
        self.chat = chat == "yes" or (chat == "auto" and has_template)
        self.token_ids = single_token_ids(self.tokenizer, answers, answers_field)

    def as_turn(self, text: str) -> str:
        """`text` as the user's turn under the chat template (when the judge reads chat), ready for the reply."""
        if not self.chat:
            return text
        return self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                  add_generation_prompt=True)


class RatingPrompts(ChoicePrompts):
    """The rubric rendered for the judge model and the ids of the rating tokens: all of the judge but its engine
    (the pre-flight check builds this to prove a configuration before any actor starts)."""

    def __init__(self, folder: Path, template: str, ratings: list[str], chat: str) -> None:
        super().__init__(folder, ratings, chat, FIELD, f"{FIELD}.ratings")
        self.rubric = read_template(template)
        self.values = [float(rating) for rating in ratings]

    def render(self, conversation: list[Message], response: str) -> str:
        return self.as_turn(rubric_text(self.rubric, conversation, response))


class EngineChoices:
    """The answers' probabilities after each prompt, renormalised over them, from a vLLM engine in this actor: one
    greedy decode step whose log-probs are read for exactly the answer tokens (`logprob_token_ids`)."""

    def __init__(self, folder: Path, options: Any, prompts: ChoicePrompts) -> None:
        self.prompts = prompts
        self.llm = start_engine(folder, dtype=options.dtype, max_model_len=options.max_model_len,
                                kv_cache_gib=options.kv_cache_gib, enforce_eager=options.enforce_eager,
                                tensor_parallel_size=options.tensor_parallel_size, seed=0, trust_remote_code=False)

    def probs(self, texts: list[str]) -> list[list[float]]:
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=self.prompts.token_ids)
        outputs = self.llm.generate([self.prompts.as_turn(text) for text in texts], params, use_tqdm=False)
        return [normalised([output.outputs[0].logprobs[0][token].logprob for token in self.prompts.token_ids])
                for output in outputs]


class LLMJudgeScorer:
    takes_conversations = True
    exclusive = True  # one engine: never two calls at once (`iterdpo.scorers.robust`)

    def __init__(self, options: Any) -> None:
        folder = resolve_model(options.model, f"{FIELD}.model")
        self.prompts = RatingPrompts(folder, options.template, options.ratings, options.chat)
        self.engine = EngineChoices(folder, options, self.prompts)

    def __call__(self, prompts: list[str], responses: list[str],
                 conversations: list[list[Message]] | None = None) -> list[float]:
        """sum_r value(r) p(r), p renormalised over the rating tokens."""
        conversations = conversations_of(prompts, conversations)
        texts = [rubric_text(self.prompts.rubric, turns, response) for turns, response in zip(conversations, responses)]
        return [expected_value(self.prompts.values, probs) for probs in self.engine.probs(texts)]
