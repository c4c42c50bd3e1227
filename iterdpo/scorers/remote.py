"""Judges that are already served: an LLM judge over an OpenAI-compatible API, and a reward model behind vLLM's
classification API. Both are checked by `probe` on the driver (one request each way) before any actor starts.

`openai_judge` renders `llm_judge`'s rubric and reads the same score, the expected rating under the judge's
next-token distribution renormalised over the rating tokens, from one generated token's log-probs:
- from a vLLM server, the rating tokens' own log-probs (`logprob_token_ids`, ids from its `/tokenize`), exactly
  what the in-actor `llm_judge` reads;
- from any other server (no `/tokenize`), the `top_logprobs` most likely tokens, matched to the ratings by text; a
  rating outside them counts as probability 0, and a sample none of whose ratings is among them is dropped (NaN).

`remote_reward_model` POSTs to ``{base_url}/classify`` (vLLM's pooling runner) and reads the raw output
(``use_activation: false``): the logit of a one-label reward model, as `hf_reward_model` reads it, or the softmax
probability of `label`. Request and response, for another server to speak it::

    POST /classify  {"model": "rm", "input": ["text", ...], "use_activation": false}           (concat, response)
    POST /classify  {"model": "rm", "messages": [{"role": ..., "content": ...}, ...], "use_activation": false}
                                                                                (chat: one conversation a request)
    200  {"data": [{"index": 0, "probs": [<logit>, ...], "num_classes": 1}, ...]}   (one entry per input, in order)
"""

from __future__ import annotations

import math
import os
from typing import Any

from iterdpo.config.scorers import EndpointOptions, OpenAIJudgeOptions, RemoteRewardModelOptions
from iterdpo.core.errors import ConfigError
from iterdpo.core.records import Message, conversations_of
from iterdpo.scorers.endpoint import Endpoint, EndpointDown, RequestRefused, server_root
from iterdpo.scorers.llm_judge import (DEFAULT_RUBRIC, PLACEHOLDERS, expected_value, normalised, read_template,
                                       rubric_text, single_token)

TOKEN_ID_KEY = "token_id:"  # how vLLM names a token with return_tokens_as_token_ids


def connect(options: EndpointOptions, root: bool = False) -> Endpoint:
    return Endpoint(server_root(options.base_url) if root else options.base_url, options.api_key_env,
                    options.request_timeout_s, options.retries, options.concurrency, options.backoff_s)


def check_served(options: EndpointOptions, field: str) -> None:
    """The server answers, takes the key, and serves `options.model`: else one line naming what is wrong."""
    if options.api_key_env and options.api_key_env not in os.environ:
        raise ConfigError(f"{field}.api_key_env: the variable {options.api_key_env} is not set in this shell")
    try:
        listing = Endpoint(server_root(options.base_url) + "/v1", options.api_key_env, options.request_timeout_s,
                           retries=0).get("/models")
    except (EndpointDown, RequestRefused) as err:
        raise ConfigError(f"{field}.base_url: {err}") from None
    served = [entry.get("id") for entry in listing.get("data", [])] if isinstance(listing, dict) else []
    if options.model not in served:
        raise ConfigError(f"{field}.model: '{options.model}' is not served at {options.base_url} (it serves "
                          f"{', '.join(map(str, served)) or 'nothing'})")


class EndpointChoices:
    """The probabilities of a few single-token answers (ratings, or the two choices of a comparison) after a
    prompt, from a served model's log-probs of one generated token."""

    def __init__(self, options: OpenAIJudgeOptions | Any, answers: list[str], field: str) -> None:
        self.options, self.answers, self.field = options, answers, field
        self.endpoint = connect(options)
        self.token_ids = self._answer_token_ids()

    def _answer_token_ids(self) -> list[int] | None:
        """The answers' token ids from the server's own tokenizer (vLLM's /tokenize), None when it has none."""
        tokenizer = Endpoint(server_root(self.options.base_url), self.options.api_key_env,
                             self.options.request_timeout_s, retries=0)
        ids = []
        for answer in self.answers:
            try:
                reply = tokenizer.post("/tokenize", {"model": self.options.model, "prompt": answer,
                                                     "add_special_tokens": False})
            except (EndpointDown, RequestRefused):  # not vLLM (or no tokenizer there): read the top log-probs
                return None
            tokens = reply.get("tokens") if isinstance(reply, dict) else None
            if not isinstance(tokens, list):
                return None
            ids.append(single_token(answer, tokens, self.field))
        return ids

    def _body(self, text: str) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.options.model, "max_tokens": 1, "temperature": 0.0}
        if self.options.api == "chat":
            body.update(messages=[{"role": "user", "content": text}], logprobs=True,
                        top_logprobs=self.options.top_logprobs)
        else:
            body.update(prompt=text, logprobs=self.options.top_logprobs)
        if self.token_ids is not None:
            body.update(logprob_token_ids=self.token_ids, return_tokens_as_token_ids=True)
        return body

    def _top(self, reply: dict[str, Any]) -> dict[str, float]:
        """The first generated token's candidates, {token text: log-prob}, from either API's answer."""
        logprobs = reply["choices"][0].get("logprobs")
        if not logprobs:
            raise EndpointDown(f"judge endpoint {self.options.base_url}: the answer has no log-probs (the server must "
                               "return them: vLLM, or an API with top_logprobs)")
        if self.options.api == "chat":
            return {entry["token"]: entry["logprob"] for entry in logprobs["content"][0]["top_logprobs"]}
        return dict(logprobs["top_logprobs"][0])

    @property
    def path(self) -> str:
        return "/chat/completions" if self.options.api == "chat" else "/completions"

    def probs(self, texts: list[str]) -> list[list[float] | None]:
        """For each prompt, the answers' probabilities renormalised over them; None when none of them was seen or
        the server refused the request (too long for its context, say): that sample or comparison is dropped."""
        replies = self.endpoint.post_many(self.path, [self._body(text) for text in texts])
        return [None if reply is None else self._read(reply) for reply in replies]

    def probe(self, text: str) -> list[float] | None:
        """`probs` of one text, with a refusal raised (`RequestRefused`, the server's reason) rather than dropped."""
        return self._read(self.endpoint.post(self.path, self._body(text)))

    def _read(self, reply: dict[str, Any]) -> list[float] | None:
        keys = ([f"{TOKEN_ID_KEY}{token}" for token in self.token_ids] if self.token_ids is not None
                else self.answers)
        top = self._top(reply)
        raw = [top.get(key, -math.inf) for key in keys]
        return None if all(value == -math.inf for value in raw) else normalised(raw)

    def describe(self) -> str:
        how = ("their own log-probs (vLLM)" if self.token_ids is not None
               else f"the top {self.options.top_logprobs} log-probs")
        return f"{self.options.model} at {self.options.base_url} ({self.options.api} API, {how})"


class OpenAIJudgeScorer:
    takes_conversations = True

    def __init__(self, options: OpenAIJudgeOptions) -> None:
        self.rubric = read_template(options.template, DEFAULT_RUBRIC, PLACEHOLDERS, "openai_judge")
        self.values = [float(rating) for rating in options.ratings]
        self.choices = EndpointChoices(options, options.ratings, "openai_judge.ratings")

    def __call__(self, prompts: list[str], responses: list[str],
                 conversations: list[list[Message]] | None = None) -> list[float]:
        conversations = conversations_of(prompts, conversations)
        texts = [rubric_text(self.rubric, turns, response) for turns, response in zip(conversations, responses)]
        return [math.nan if probs is None else expected_value(self.values, probs)
                for probs in self.choices.probs(texts)]


class RemoteRewardModelScorer:
    takes_conversations = True

    def __init__(self, options: RemoteRewardModelOptions) -> None:
        self.options = options
        self.endpoint = connect(options, root=True)

    def _bodies(self, prompts: list[str], responses: list[str], conversations: list[list[Message]]
                ) -> list[dict[str, Any]]:
        base = {"model": self.options.model, "use_activation": False}
        if self.options.input_format == "chat":
            return [{**base, "messages": [*turns, {"role": "assistant", "content": response}]}
                    for turns, response in zip(conversations, responses)]
        texts = ([p + r for p, r in zip(prompts, responses)] if self.options.input_format == "concat"
                 else list(responses))
        size = max(1, math.ceil(len(texts) / self.options.concurrency))  # one request per connection
        return [{**base, "input": texts[i : i + size]} for i in range(0, len(texts), size)]

    def _value(self, entry: dict[str, Any]) -> float:
        outputs = entry["probs"]
        if len(outputs) == 1:
            return float(outputs[0])
        label = self.options.label
        if label is None or label >= len(outputs):
            raise EndpointDown(f"reward model endpoint {self.options.base_url}: {len(outputs)} outputs; set "
                               "remote_reward_model.label to the one to score")
        top = max(outputs)
        weights = [math.exp(value - top) for value in outputs]
        return weights[label] / sum(weights)

    def __call__(self, prompts: list[str], responses: list[str],
                 conversations: list[list[Message]] | None = None) -> list[float]:
        conversations = conversations_of(prompts, conversations)
        bodies = self._bodies(prompts, responses, conversations)
        replies = self.endpoint.post_many("/classify", bodies)
        scores: list[float] = []
        for body, reply in zip(bodies, replies):
            if reply is None:  # refused (too long, say): its samples are dropped
                scores += [math.nan] * len(body.get("input", [None]))
            else:
                scores += [self._value(entry) for entry in sorted(reply["data"], key=lambda e: e["index"])]
        return scores


def probe_openai_judge(options: OpenAIJudgeOptions) -> str:
    """One rating request through the whole path; the line `iterdpo check` prints, or a ConfigError."""
    check_served(options, "openai_judge")
    scorer = probe_choices(lambda: OpenAIJudgeScorer(options).choices, options, options.ratings, "openai_judge",
                           rubric_text(DEFAULT_RUBRIC, [{"role": "user", "content": "Say hello."}], "Hello!"))
    return f"LLM judge {scorer.describe()}, ratings {options.ratings}"


def probe_choices(build: Any, options: Any, answers: list[str], field: str, text: str) -> EndpointChoices:
    """`build()`'s endpoint (at `options.base_url`) asked `text` once: the built object, or one line saying why it
    cannot judge."""
    try:
        choices = build()
        probs = choices.probe(text)
    except (EndpointDown, RequestRefused) as err:
        raise ConfigError(f"{field}: {err}") from None
    except (KeyError, IndexError, TypeError, AttributeError):
        raise ConfigError(f"{field}: {options.base_url} answered, but not in the OpenAI {options.api} API's shape "
                          "(choices[0].logprobs)") from None
    if probs is None:
        raise ConfigError(f"{field}: none of {answers} is among the top {options.top_logprobs} tokens the "
                          "judge answers with (raise top_logprobs, or serve it with vLLM, whose answers' own "
                          "log-probs are read)")
    return choices


def probe_remote_reward_model(options: RemoteRewardModelOptions) -> str:
    check_served(options, "remote_reward_model")
    endpoint = connect(options, root=True)
    try:
        reply = endpoint.post("/classify", {"model": options.model, "input": ["Hello!"], "use_activation": False})
        outputs = reply["data"][0]["probs"]
    except (EndpointDown, RequestRefused) as err:
        raise ConfigError(f"remote_reward_model: {err} (expected vLLM's /classify: `vllm serve <model> --runner "
                          "pooling`)") from None
    except (KeyError, IndexError, TypeError):
        raise ConfigError(f"remote_reward_model: {options.base_url}/classify answered without data[0].probs "
                          "(see iterdpo/scorers/remote.py for the shapes)") from None
    if len(outputs) > 1 and (options.label is None or options.label >= len(outputs)):
        raise ConfigError(f"remote_reward_model.label: the model has {len(outputs)} outputs; name the index to score")
    what = "one score" if len(outputs) == 1 else f"P(output {options.label}) of {len(outputs)}"
    return f"reward model {options.model} at {options.base_url}/classify ({what}, {options.input_format} input)"
