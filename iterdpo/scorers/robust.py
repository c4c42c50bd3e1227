"""A wrapper that keeps one bad sample or one flaky call from failing a whole judge step.

The samples are scored in calls of ``batch_size`` (the mini-batches), and for each call, in order:
1. If the call raises or runs past ``timeout_s`` (a bound on one mini-batch, whatever the whole batch's size), it is
   retried, up to ``retries`` more times.
2. If every attempt failed, each of its samples is scored alone (same timeout): a sample whose call raises or times
   out gets NaN. If more than ``max_drop_fraction`` of the mini-batch fails this way the scorer is treated as broken
   and `ScorerError` is raised at that point (this also bounds the time a scorer that hangs on everything can take).
3. Any value that is not a finite number (NaN, inf, None, text) becomes NaN. Every NaN counts as a dropped sample.
4. An output of the wrong length is a bug in the scorer, not a bad sample: `ScorerError` at once, no retry.

A timed-out call cannot be killed: it runs on in a daemon thread and its result is ignored. A scorer that holds one
model (`exclusive`: a reward model, an LLM judge's engine) is never called again while such a call runs (two
`generate` calls on one engine at once): the next call waits for it first, up to ``timeout_s`` more, and a scorer
still busy then is stuck (`ScorerError`). Model scorers take no timeout by default (`ScorerSpec.call_timeout_s`).

A scorer whose `takes_conversations` attribute is true also gets each prompt's conversation (the keyword argument
`conversations`: lists of {role, content} messages; a plain prompt is one user turn). A scorer whose `whole_prompts`
attribute is true (a pairwise judge) is called with whole runs of one prompt's responses (one conversation): its
mini-batches and what it is retried on alone are those runs, never a part of one, and the share it may drop is
counted in runs. A scorer may return its scores as a list with a `counts` attribute (comparisons, flips): the counts
of the calls whose scores were kept are summed into the batch's (never those of a call that timed out).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any

from iterdpo.core.records import Message, conversations_of
from iterdpo.core.sharding import conversation_key, prompt_runs
from iterdpo.config.scorers import Scorer


class ScorerError(RuntimeError):
    """A scorer failed beyond what dropping samples can absorb; the message is one line naming the scorer."""


class _WrongLength(Exception):
    pass


@dataclass
class ScoredBatch:
    scores: list[float]  # NaN where a sample was dropped
    failed_batch_calls: int  # batch attempts that raised or timed out
    counts: dict[str, float] = field(default_factory=dict)  # the scorer's own counts (its kept calls')

    @property
    def dropped(self) -> int:
        return sum(1 for value in self.scores if math.isnan(value))


def _as_float(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) else math.nan


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:200]}" if text else type(err).__name__


class RobustScorer:
    def __init__(self, scorer: Scorer, name: str, timeout_s: float | None = 120.0, retries: int = 1,
                 max_drop_fraction: float = 0.5, batch_size: int | None = None) -> None:
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"scorer '{name}': timeout_s must be > 0 or None, got {timeout_s}")
        if retries < 0:
            raise ValueError(f"scorer '{name}': retries must be >= 0, got {retries}")
        self.scorer, self.name = scorer, name
        self.timeout_s, self.retries, self.max_drop_fraction = timeout_s, retries, max_drop_fraction
        self.batch_size = batch_size
        self._busy: threading.Thread | None = None  # a call that timed out and may still be running
        self._counts: dict[str, float] = {}  # the kept calls' counts in the current `score`

    def score(self, prompts: list[str], responses: list[str], conversations: list[list[Message]] | None = None
              ) -> ScoredBatch:
        if len(prompts) != len(responses):
            raise ValueError(f"scorer '{self.name}': {len(prompts)} prompts but {len(responses)} responses")
        conversations = conversations_of(prompts, conversations)
        self._counts = {}
        units = self._units(conversations)
        parts = [self._score_batch(prompts[lo:hi], responses[lo:hi], conversations[lo:hi])
                 for lo, hi in self._mini_batches(units)]
        return ScoredBatch([value for part in parts for value in part.scores],
                           sum(part.failed_batch_calls for part in parts), self._counts)

    def _units(self, conversations: list[list[Message]]) -> list[tuple[int, int]]:
        """[lo, hi) of what is scored together: a sample, or a run of one conversation's responses (`whole_prompts`)."""
        if not getattr(self.scorer, "whole_prompts", False):
            return [(i, i + 1) for i in range(len(conversations))]
        return prompt_runs([conversation_key(turns) for turns in conversations])

    def _mini_batches(self, units: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Consecutive units of at most `batch_size` samples together (a longer unit alone)."""
        batches: list[tuple[int, int]] = []
        for lo, hi in units:
            if batches and (self.batch_size is None or hi - batches[-1][0] <= self.batch_size):
                batches[-1] = (batches[-1][0], hi)
            else:
                batches.append((lo, hi))
        return batches

    def _score_batch(self, prompts: list[str], responses: list[str], conversations: list[list[Message]]
                     ) -> ScoredBatch:
        last_error: BaseException | None = None
        for attempt in range(self.retries + 1):
            try:
                return ScoredBatch(self._call(prompts, responses, conversations), failed_batch_calls=attempt)
            except _WrongLength as err:
                raise ScorerError(str(err)) from None
            except ScorerError:
                raise
            except Exception as err:  # noqa: BLE001 - any failure of user code is retried, then isolated
                last_error = err
        return ScoredBatch(self._isolate(prompts, responses, conversations, last_error),
                           failed_batch_calls=self.retries + 1)

    def _isolate(self, prompts: list[str], responses: list[str], conversations: list[list[Message]],
                 batch_error: BaseException) -> list[float]:
        units = self._units(conversations)
        allowed = int(self.max_drop_fraction * len(units))
        scores: list[float] = []
        failures = 0
        for lo, hi in units:
            try:
                scores += self._call(prompts[lo:hi], responses[lo:hi], conversations[lo:hi])
            except _WrongLength as err:
                raise ScorerError(str(err)) from None
            except ScorerError:
                raise
            except Exception as err:  # noqa: BLE001
                failures += 1
                scores += [math.nan] * (hi - lo)
                if failures > allowed:
                    raise ScorerError(
                        f"scorer '{self.name}' failed on the batch of {len(responses)} ({self.retries + 1} attempts: "
                        f"{_one_line(batch_error)}) and on {failures} samples alone ({_one_line(err)})"
                    ) from None
        return scores

    def _call(self, prompts: list[str], responses: list[str], conversations: list[list[Message]]) -> list[float]:
        raw = self._run_with_timeout(prompts, responses, conversations)
        try:
            values = list(raw)
        except TypeError:
            message = f"scorer '{self.name}' returned {type(raw).__name__}, expected a list of floats"
            raise _WrongLength(message) from None
        if len(values) != len(responses):
            raise _WrongLength(f"scorer '{self.name}' returned {len(values)} scores for {len(responses)} responses")
        for key, value in getattr(raw, "counts", {}).items():  # this call's scores are kept: so are its counts
            self._counts[key] = self._counts.get(key, 0.0) + value
        return [_as_float(value) for value in values]

    def _run_with_timeout(self, prompts: list[str], responses: list[str], conversations: list[list[Message]]) -> Any:
        extra = {"conversations": conversations} if getattr(self.scorer, "takes_conversations", False) else {}
        self._wait_until_free()
        if self.timeout_s is None:
            return self.scorer(prompts, responses, **extra)
        outcome: dict[str, Any] = {}

        def target() -> None:
            try:
                outcome["value"] = self.scorer(prompts, responses, **extra)
            except BaseException as err:  # noqa: BLE001 - handed to the calling thread
                outcome["error"] = err

        thread = threading.Thread(target=target, name=f"scorer-{self.name}", daemon=True)
        thread.start()
        thread.join(self.timeout_s)
        if thread.is_alive():
            self._busy = thread
            raise TimeoutError(f"scorer '{self.name}' took longer than {self.timeout_s:g} s")
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]

    def _wait_until_free(self) -> None:
        """A call that timed out earlier must be over before an exclusive scorer (its engine, its model) is called
        again."""
        if self._busy is None or not getattr(self.scorer, "exclusive", False):
            return
        self._busy.join(self.timeout_s)
        if self._busy.is_alive():
            raise ScorerError(f"scorer '{self.name}' is stuck: a call has run past twice its timeout "
                              f"({self.timeout_s:g} s) and it cannot be called again meanwhile")
        self._busy = None
