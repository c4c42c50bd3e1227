"""A Ray node with fake GPUs on this CPU machine (`ray.init(num_gpus=N)`), apart from the test session's own node:

    python tests/fake_gpus.py devices N OVERRIDE...   one JSON line: what every actor of the config would see and use
    python tests/fake_gpus.py check N ARG...          `iterdpo check ARG...` against this node

`devices` starts, for each actor the config asks for, a probe actor with exactly the Ray options the run's groups
give that actor (resources and environment: `GeneratorGroup.actor_options`, `JudgeGroup.actor_options`,
`LearnerGroup.rank_options`, each in its bundle of the run's placement group), all alive at once as in a run, and
asks each for the GPUs Ray gave it, the devices it sees and the device the run's code would pick
(`iterdpo.core.devices`)."""

import json
import logging
import os
import sys
import tempfile


class Probe:
    def report(self) -> dict:
        import ray

        from iterdpo.core.devices import device_kind

        return {"gpu_ids": sorted(str(gpu) for gpu in ray.get_gpu_ids()),
                "visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "device": device_kind(),
                "engine_in_process": os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")}


def devices(overrides: list[str]) -> dict:
    import ray

    from iterdpo.config.loading import config_from_dict
    from iterdpo.rounds.groups import GeneratorGroup, JudgeGroup, LearnerGroup
    from iterdpo.rounds.placement import ROLES, Placement
    from iterdpo.rounds.runtime import actor_env

    cfg = config_from_dict({}, overrides)
    base = {"runtime_env": {"env_vars": actor_env()}, "max_restarts": 0}
    placement = Placement.reserve({role: getattr(cfg, role) for role in ROLES}, 60)
    options = {"generator": [{**GeneratorGroup.actor_options(cfg.generator, base),
                              **placement.options("generator", i)} for i in range(cfg.generator.replicas)],
               "judge": [{**JudgeGroup.actor_options(cfg.judge, base), **placement.options("judge", i)}
                         for i in range(cfg.judge.replicas)],
               "learner": LearnerGroup.rank_options(cfg.learner, base, placement)[0]}
    probes = {role: [ray.remote(Probe).options(**option).remote() for option in group]
              for role, group in options.items()}
    return {role: ray.get([probe.report.remote() for probe in group]) for role, group in probes.items()}


def main() -> int:
    import ray

    command, gpus, args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    # This node's own start-up lines stay off the console: the CLI's output is what the tests read.
    ray.init(num_cpus=8, num_gpus=gpus, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
             _temp_dir=tempfile.mkdtemp(prefix="fake-gpus-"))
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address  # the CLI joins this node
    try:
        if command == "devices":
            print(json.dumps(devices(args)))
            return 0
        from iterdpo.cli import main as cli

        return cli(["check", *args])
    finally:
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
