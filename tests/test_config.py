import pytest

from iterdpo.config.schema import Config, ConfigError
from iterdpo.config.schedule import round_settings
from iterdpo.config.loading import config_from_dict, load_config


def test_defaults_are_one_typed_tree():
    cfg = config_from_dict({})
    assert cfg == Config()
    assert cfg.round.beta == 0.1 and cfg.learner.zero_stage == 0


def test_dotted_overrides_are_typed():
    cfg = config_from_dict({"round": {"beta": 0.2}}, ["round.beta=0.5", "learner.zero_stage=3", "run.rounds=4"])
    assert cfg.round.beta == 0.5 and cfg.learner.zero_stage == 3 and cfg.run.rounds == 4


def test_exponent_floats_are_numbers_in_files_and_overrides(tmp_path):
    """YAML 1.1 reads `1e-5` as a string; a learning rate written so is a float here."""
    path = tmp_path / "lr.yaml"
    path.write_text("round:\n  learning_rate: 2e-5\n  beta: 1.5E-1\n")
    cfg = load_config(path, ["round.loss_params.aux_lambda_null=1e-6", "run.rounds=2"])
    assert cfg.round.learning_rate == 2e-5 and cfg.round.beta == 0.15
    assert cfg.round.loss_params == {"aux_lambda_null": 1e-6} and cfg.run.rounds == 2
    assert load_config(path, ["round.learning_rate=3e-5"]).round.learning_rate == 3e-5
    assert config_from_dict({}, ["round.learning_rate=.5e-4"]).round.learning_rate == 5e-5
    with pytest.raises(ConfigError, match="round.learning_rate: expected float, got str '1e-5x'"):
        config_from_dict({}, ["round.learning_rate=1e-5x"])


def test_loss_params_take_their_fields_types():
    assert config_from_dict({}, ["round.loss_params={eps: 0, aux_cap: null}"]).round.loss_params == {
        "eps": 0.0, "aux_cap": None}
    with pytest.raises(ConfigError, match=r"^round.loss_params.eps: expected float, got str 'abc'$"):
        config_from_dict({}, ["round.loss_params.eps=abc"])
    with pytest.raises(ConfigError, match=r"^schedule\[1\].loss_params.ipo_normalize: expected bool"):
        config_from_dict({"run": {"rounds": 2}, "schedule": [{}, {"loss_params": {"ipo_normalize": 3}}]})


def test_lora_is_a_nested_section():
    assert config_from_dict({}).learner.lora.rank == 0  # full fine-tuning unless asked for
    lora = config_from_dict({"learner": {"lora": {"alpha": 32}}}, ["learner.lora.rank=8"]).learner.lora
    assert (lora.rank, lora.alpha, lora.target_modules) == (8, 32.0, ["q_proj", "k_proj", "v_proj", "o_proj"])
    assert config_from_dict({}, ["learner.lora.target_modules=all-linear"]).learner.lora.target_modules == "all-linear"
    with pytest.raises(ConfigError, match=r"learner.lora.dropout: expected a value in \[0, 1\)"):
        config_from_dict({}, ["learner.lora.dropout=1.0"])
    with pytest.raises(ConfigError, match="learner.lora.target_modules: expected 'all-linear' or a list"):
        config_from_dict({}, ["learner.lora.target_modules=q_proj"])


def test_int_is_accepted_for_float():
    assert config_from_dict({"round": {"beta": 1}}).round.beta == 1.0


def test_unknown_key_suggests_nearest():
    with pytest.raises(ConfigError, match=r"unknown config key 'round.bta' \(did you mean 'round.beta'\?\)"):
        config_from_dict({"round": {"bta": 0.1}})
    with pytest.raises(ConfigError, match="unknown config key 'lerner'.*'learner'"):
        config_from_dict({"lerner": {}})


def test_wrong_type_names_field_and_type():
    with pytest.raises(ConfigError, match="round.epochs: expected int, got str 'two'"):
        config_from_dict({}, ["round.epochs=two"])
    with pytest.raises(ConfigError, match="learner.bf16: expected bool"):
        config_from_dict({"learner": {"bf16": 1}})


def test_ranges_and_choices():
    with pytest.raises(ConfigError, match="round.beta: expected a value > 0"):
        config_from_dict({"round": {"beta": 0}})
    with pytest.raises(ConfigError, match="learner.zero_stage: expected one of"):
        config_from_dict({"learner": {"zero_stage": 4}})


def test_config_is_frozen():
    cfg = config_from_dict({})
    with pytest.raises(AttributeError):
        cfg.round.beta = 3.0  # type: ignore[misc]


def test_schedule_values_carry_over():
    cfg = config_from_dict({"run": {"rounds": 3}, "schedule": [{"beta": 0.3}, {"learning_rate": 1e-4}]})
    assert round_settings(cfg, cfg.schedule, 1).beta == 0.3
    second = round_settings(cfg, cfg.schedule, 2)
    assert second.beta == 0.3 and second.learning_rate == 1e-4
    assert round_settings(cfg, cfg.schedule, 3) == second


def test_schedule_entries_are_validated():
    with pytest.raises(ConfigError, match=r"unknown config key 'schedule\[0\].bet'"):
        config_from_dict({"schedule": [{"bet": 0.3}]})
    with pytest.raises(ConfigError, match=r"schedule\[1\].beta: expected a value > 0"):
        config_from_dict({"schedule": [{}, {"beta": -1}]})


def test_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("round: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)


def test_python_schedule_carries_over_and_adapts():
    from iterdpo.config.schedule import Round, Schedule

    base = config_from_dict({})
    schedule = Schedule([Round(beta=0.3), Round(learning_rate=1e-4), {"epochs": 2}])
    assert schedule.settings(base, 1, []).beta == 0.3
    third = schedule.settings(base, 3, [])
    assert (third.beta, third.learning_rate, third.epochs) == (0.3, 1e-4, 2)

    def raise_beta_when_reward_falls(history):
        if len(history) >= 2 and history[-1]["eval/reward_mean"] < history[-2]["eval/reward_mean"]:
            return {"beta": history[-1]["settings"]["beta"] * 2}
        return None

    adaptive = Schedule(adapt=raise_beta_when_reward_falls)
    history = [{"eval/reward_mean": 0.5}, {"eval/reward_mean": 0.4, "settings": {"beta": 0.1}}]
    assert adaptive.settings(base, 1, history[:1]).beta == 0.1
    assert adaptive.settings(base, 2, history).beta == 0.2


def test_python_schedule_is_validated():
    from iterdpo.config.schedule import Round, Schedule

    with pytest.raises(ConfigError, match=r"schedule\[0\].beta: expected a value > 0"):
        Schedule([Round(beta=-1.0)]).settings(config_from_dict({}), 1, [])


def test_replicas_are_positive_and_count_in_the_resources():
    cfg = config_from_dict({}, ["generator.replicas=2", "learner.replicas=2", "generator.num_cpus=0.25",
                                "learner.num_cpus=0.5"])
    assert (cfg.generator.replicas, cfg.learner.replicas) == (2, 2)
    assert config_from_dict({}).learner.replicas == config_from_dict({}).generator.replicas == 1
    with pytest.raises(ConfigError, match="generator.replicas: expected a value > 0"):
        config_from_dict({}, ["generator.replicas=0"])
    with pytest.raises(ConfigError, match="ask for 3 CPUs in all.*or replicas"):
        config_from_dict({}, ["learner.replicas=2"])  # 0.5 + 0.5 + 2 x 1 on run.num_cpus=2
    with pytest.raises(ConfigError, match="learner.replicas: auxdpo trains per-pair deltas on one learner"):
        config_from_dict({"schedule": [{}, {"loss": "auxdpo"}]}, ["learner.replicas=2", "learner.num_cpus=0.5"])


def test_overrides_apply_to_a_config_object_too():
    from iterdpo.config.loading import with_overrides

    cfg = with_overrides(config_from_dict({}), ["round.beta=0.3", "learner.lora.rank=4"])
    assert (cfg.round.beta, cfg.learner.lora.rank) == (0.3, 4)
    with pytest.raises(ConfigError, match="round.beta: expected a value > 0"):
        with_overrides(cfg, ["round.beta=-1"])


def test_constraints_hold_however_a_section_is_made():
    from iterdpo.config.schema import LoraConfig, RoundConfig

    with pytest.raises(ConfigError, match=r"dropout: expected a value in \[0, 1\)"):
        LoraConfig(dropout=1.5)
    with pytest.raises(ConfigError, match="loss: expected one of .*did you mean 'dpo'"):
        RoundConfig(loss="dpoo")
    assert LoraConfig(alpha=16).alpha == 16.0 and isinstance(LoraConfig(alpha=16).alpha, float)


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_floats_must_be_finite(value):
    with pytest.raises(ConfigError, match="round.beta: expected a finite number"):
        config_from_dict({}, [f"round.beta={value}"])
    with pytest.raises(ConfigError, match="gate.max_refusal_drop: expected"):
        config_from_dict({}, [f"gate.max_refusal_drop={value}"])


def test_auxdpo_needs_the_refresh_reference_and_safedpo_the_safety_annotation():
    with pytest.raises(ConfigError, match="round.reference: auxdpo takes its null-space matrix at the round-start "
                                          "weights.*expected refresh, got 'fixed'"):
        config_from_dict({}, ["round.loss=auxdpo", "round.reference=fixed"])
    with pytest.raises(ConfigError, match=r"schedule\[1\].reference: auxdpo .* got 'ema'"):
        config_from_dict({"schedule": [{"loss": "auxdpo"}, {"reference": "ema"}]})
    with pytest.raises(ConfigError, match="judge.annotate_safety: safedpo orders pairs by each response's safety"):
        config_from_dict({}, ["round.loss=safedpo", "judge.annotate_safety=false"])
    assert config_from_dict({}, ["round.loss=auxdpo", "round.epochs=2"]).round.reference == "refresh"


def test_a_config_file_extends_another_and_overrides_only_what_differs(tmp_path):
    (tmp_path / "base.yaml").write_text("round: {beta: 0.2, epochs: 2}\nrun: {rounds: 5}\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nround: {epochs: 3}\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert (cfg.round.beta, cfg.round.epochs, cfg.run.rounds) == (0.2, 3, 5)
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(ConfigError, match="extends 'loop.yaml' in a circle"):
        load_config(tmp_path / "loop.yaml")
    (tmp_path / "orphan.yaml").write_text("extends: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="extends 'nowhere.yaml': expected a config file path"):
        load_config(tmp_path / "orphan.yaml")


def test_every_shipped_config_loads():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "configs"
    files = [path for path in root.rglob("*.yaml") if path.name != "runtime_env.yaml"]
    assert len(files) >= 10
    for path in files:
        load_config(path)
    assert load_config(root / "compare" / "auxdpo_lora4.yaml").learner.lora.rank == 4


def test_half_precision_needs_the_half_precision_parity_bounds():
    """bf16 log-probs of the same weights differ between two correct computations (99th percentile of the per-token
    gaps up to 0.3, mean up to 0.05): the fp32 bounds would stop every run at its first parity check, so the config is
    refused before anything starts, naming the bound."""
    for overrides in (["learner.bf16=true"], ["generator.dtype=bfloat16"], ["generator.dtype=float16"]):
        with pytest.raises(ConfigError, match=r"^sync.parity_tolerance: with .* expected at least 0.5 .*got 0.002$"):
            config_from_dict({}, overrides)
        with pytest.raises(ConfigError, match=r"^sync.parity_mean_tolerance: with .* at least 0.1 .*got 0.002$"):
            config_from_dict({}, overrides + ["sync.parity_tolerance=0.5"])
        cfg = config_from_dict({}, overrides + ["sync.parity_tolerance=0.5", "sync.parity_mean_tolerance=0.1"])
        assert (cfg.sync.parity_tolerance, cfg.sync.parity_mean_tolerance) == (0.5, 0.1)

def test_custom_resources_are_custom():
    assert config_from_dict({}, ["learner.resources.trainer=1"]).learner.resources == {"trainer": 1}
    with pytest.raises(ConfigError, match=r"^generator.resources.GPU: set num_gpus instead"):
        config_from_dict({"generator": {"resources": {"GPU": 1}}})
