"""The errors a user sees as one line: the leaf every other module may import."""

from __future__ import annotations


class ConfigError(ValueError):
    """A user error in a config file, an override or an input file; the CLI prints it as one line, exit code 2."""


class RunError(RuntimeError):
    """A run cannot go on; the message says why in one line."""


class ActorFailure(RunError):
    """An actor raised during a phase. The message is one line (actor, phase, cause); `details` holds the remote
    traceback; `cause` is the actor's own exception."""

    def __init__(self, actor: str, phase: str, cause: BaseException, details: str) -> None:
        text = " ".join(str(cause).split())
        super().__init__(f"the {actor} actor failed during {phase}: {type(cause).__name__}"
                         + (f": {text[:300]}" if text else ""))
        self.actor, self.phase, self.cause, self.details = actor, phase, cause, details


class ParityError(RunError):
    """The generator's log-probs disagree with the learner's after a weight sync: the engine is stale or wrong."""
