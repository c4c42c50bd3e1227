"""Models and data sets by Hugging Face Hub id (`org/name`, optionally `@revision`), through `huggingface_hub`.

Everything goes through `snapshot_download`, so the user's setup applies as with any Hugging Face tool: `HF_HOME` /
`HF_HUB_CACHE` (where the cache is), `HF_TOKEN` or a saved login (gated and private repos), `HF_HUB_OFFLINE` (cache
only, never the network). A snapshot folder is named by its commit, which is how a run pins an id once
(`org/name@<commit>`): every actor then loads that same commit on its own node, from its own cache.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from iterdpo.core.errors import ConfigError

_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[\w./-]+))?$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
# What a driver needs of a model to check it and plan a run: no weights.
METADATA_FILES = ["*.json", "*.txt", "*.model", "*.jinja", "*.tiktoken", "tokenizer*", "README.md"]


@dataclass(frozen=True)
class HubRef:
    repo_id: str
    revision: str | None = None

    @classmethod
    def parse(cls, text: str) -> HubRef | None:
        """The Hub id in `text`, or None when `text` is not one (or names an existing local path)."""
        match = _ID.match(text)
        if match is None or Path(text).exists():
            return None
        return cls(match["repo"], match["revision"])

    @property
    def pinned(self) -> bool:
        return self.revision is not None and _COMMIT.match(self.revision) is not None

    def __str__(self) -> str:
        return self.repo_id if self.revision is None else f"{self.repo_id}@{self.revision}"


def hub_cache() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def snapshot(ref: HubRef, repo_type: str, field: str, allow_patterns: list[str] | None = None) -> Path:
    """The local snapshot folder of `ref` (downloaded unless cached); a failure is one line naming `field`, the id
    and the cache that was searched."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    what = "data set" if repo_type == "dataset" else "model"
    try:
        return Path(snapshot_download(ref.repo_id, repo_type=repo_type, revision=ref.revision,
                                      allow_patterns=allow_patterns))
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if constants.is_offline_mode() else "the Hub could not be reached"
        raise ConfigError(f"{field}: {what} '{ref}' is neither a local folder nor in the Hugging Face cache "
                          f"({constants.HF_HUB_CACHE}), and {why}") from None
    except GatedRepoError:
        raise ConfigError(f"{field}: {what} '{ref}' is gated on the Hub: accept its terms and log in "
                          "(HF_TOKEN or `hf auth login`)") from None
    except RevisionNotFoundError:
        raise ConfigError(f"{field}: {what} '{ref.repo_id}' has no revision '{ref.revision}' on the Hub") from None
    except RepositoryNotFoundError:
        raise ConfigError(f"{field}: no {what} '{ref.repo_id}' on the Hub (or it is private: set HF_TOKEN)") from None
    except (HfHubHTTPError, OSError) as err:
        raise ConfigError(f"{field}: {what} '{ref}' could not be fetched ({type(err).__name__}: "
                          f"{' '.join(str(err).split())[:200]})") from None


def pin(ref: HubRef, folder: Path) -> HubRef:
    """`ref` at the commit its snapshot `folder` holds (snapshot folders are named by commit)."""
    return HubRef(ref.repo_id, folder.name) if _COMMIT.match(folder.name) else ref


HUB_CACHE_VARIABLES = ("HF_HOME", "HF_HUB_CACHE", "HF_DATASETS_CACHE")  # folders: each node has its own


def hub_env(with_caches: bool = True) -> dict[str, str]:
    """The Hugging Face settings of this process that the actors share (never the token: a node has its own login
    or HF_TOKEN); the cache folders only `with_caches` (actors on this machine: on another node a folder of this
    one means nothing)."""
    names = ("HF_HUB_OFFLINE", "HF_ENDPOINT") + (HUB_CACHE_VARIABLES if with_caches else ())
    return {name: os.environ[name] for name in names if name in os.environ}
