"""The errors a user sees as one line: the leaf every other module may import."""

from __future__ import annotations


class ConfigError(ValueError):
    """A user error in a config file, an override or an input file; the CLI prints it as one line, exit code 2."""


class RunError(RuntimeError):
    """A run cannot go on; the message says why in one line."""


class ParityError(RunError):
    """The generator's log-probs disagree with the learner's after a weight sync: the engine is stale or wrong."""
