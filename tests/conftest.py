import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Ray's session files and sockets go under the project, not the system temp folder.
os.environ.setdefault("ITERDPO_RAY_TMP", str(ROOT / ".cache" / "ray"))
# No test reaches the network, nor the user's Hugging Face cache: Hub ids resolve from stand-ins built in a cache of
# the tests' own (set before anything imports huggingface_hub, which reads these once).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HOME", str(ROOT / ".cache" / "hf"))
os.environ.setdefault("HF_HUB_CACHE", str(Path(os.environ["HF_HOME"]) / "hub"))


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from iterdpo.rounds.runtime import init_ray

    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def hub() -> dict:
    """The Hub stand-ins (`tests/hub_standin.py`) in the tests' cache; their snapshot folders by repo id."""
    import hub_standin

    return hub_standin.build(Path(os.environ["HF_HUB_CACHE"]))
