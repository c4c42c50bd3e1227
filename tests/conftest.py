import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Ray's session files and sockets go under the project, not the system temp folder.
os.environ.setdefault("ITERDPO_RAY_TMP", str(ROOT / ".cache" / "ray"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from iterdpo.runtime import init_ray

    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()
