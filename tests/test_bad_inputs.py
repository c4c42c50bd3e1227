"""The bad-input battery: each bad input gives one line naming it and what was expected, exit code 2."""

import json

import pytest

from iterdpo.cli import main

SMOKE = "model:\n  path: builtin:tiny-qwen2\n"


def _files(tmp_path):
    """Bad files of every kind, built on the fly."""
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1"))
    (tmp_path / "wrong_column.jsonl").write_text(json.dumps({"text": "hello"}) + "\n")
    (tmp_path / "broken.jsonl").write_text('{"prompt": "a"}\n{"prompt": \n')
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"architectures": ["BertForSequenceClassification"]}))
    (tmp_path / "no_tokenizer").mkdir()
    (tmp_path / "no_tokenizer" / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (tmp_path / "no_eos").mkdir()
    (tmp_path / "no_eos" / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (tmp_path / "no_eos" / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 512}))
    (tmp_path / "bad_json_model").mkdir()
    (tmp_path / "bad_json_model" / "config.json").write_text("{not json")
    (tmp_path / "latin1.yaml").write_bytes("round:\n  loss: d\xe9po\n".encode("latin-1"))
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "metrics.jsonl").write_text('{"round": 0}\n')
    (tmp_path / "duplicate.yaml").write_text("round:\n  beta: 0.1\nrun: {rounds: 2}\nround:\n  epochs: 2\n")
    _model_copies(tmp_path)


def _model_copies(tmp_path):
    """The tiny model with a truncated weight file, a corrupt header, and pickled weights only."""
    import shutil

    from iterdpo.data.models import resolve_model

    source = resolve_model("builtin:tiny-qwen2")
    for name in ("truncated", "corrupt", "pickled"):
        shutil.copytree(source, tmp_path / name)
    weights = tmp_path / "truncated" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    corrupt = tmp_path / "corrupt" / "model.safetensors"
    data = corrupt.read_bytes()
    corrupt.write_bytes(data[:8] + b"{not json" + data[17:])
    (tmp_path / "pickled" / "model.safetensors").rename(tmp_path / "pickled" / "pytorch_model.bin")


# (name, yaml text or None, extra CLI arguments, words the one-line error must contain)
CASES = [
    ("yaml syntax", "round: [1, 2\n", [], ["invalid YAML", "line"]),
    ("top-level list", None, ["@list.yaml"], ["expected a mapping"]),
    ("not UTF-8 config", None, ["@latin1.yaml"], ["not UTF-8"]),
    ("unknown group", "rnd: {}\n", [], ["unknown config key 'rnd'", "round"]),
    ("unknown key", "round:\n  bta: 0.1\n", [], ["round.bta", "round.beta"]),
    ("wrong type int", "", ["round.epochs=two"], ["round.epochs", "expected int"]),
    ("wrong type bool", "", ["learner.bf16=3"], ["learner.bf16", "expected bool"]),
    ("wrong type list", "judge:\n  scorers: 3\n", [], ["judge.scorers", "expected a list"]),
    ("negative count", "", ["data.prompts_per_round=-4"], ["data.prompts_per_round", "> 0"]),
    ("zero eval prompts", "", ["data.eval_prompts=0"], ["data.eval_prompts", "> 0"]),
    ("beta zero", "", ["round.beta=0"], ["round.beta", "> 0"]),
    ("beta negative", "", ["round.beta=-0.1"], ["round.beta", "> 0"]),
    ("impossible resources", "", ["learner.num_cpus=8"], ["num_cpus", "run.num_cpus=2"]),
    ("negative resources", "", ["generator.num_gpus=-1"], ["generator.num_gpus", ">= 0"]),
    ("unknown loss", "", ["round.loss=dpoo"], ["round.loss", "expected one of"]),
    ("unknown loss param", "", ["round.loss_params={epss: 0.1}"], ["round.loss_params.epss", "eps"]),
    ("loss param range", "", ["round.loss_params={eps: 0.7}"], ["round.loss_params", "eps"]),
    ("schedule key", "schedule:\n  - {bet: 0.2}\n", [], ["schedule[0].bet"]),
    ("schedule too long", "run: {rounds: 1}\nschedule: [{}, {}]\n", [], ["schedule", "run.rounds=1"]),
    ("ema rate", "", ["round.ema_rate=1.5"], ["ema_rate", "[0, 1)"]),
    ("lora rank negative", "", ["learner.lora.rank=-8"], ["learner.lora.rank", ">= 0"]),
    ("lora key", "learner:\n  lora: {rnak: 8}\n", [], ["learner.lora.rnak", "learner.lora.rank"]),
    ("lora targets", "", ["learner.lora.target_modules=[]"], ["learner.lora.target_modules", "all-linear"]),
    ("lora with zero-3", "", ["learner.lora.rank=8", "learner.zero_stage=3"], ["learner.lora.rank", "zero_stage"]),
    ("reference mode", "", ["round.reference=frozen"], ["round.reference", "refresh"]),
    ("gate baseline", "", ["gate.baseline=best"], ["gate.baseline", "last_accepted"]),
    ("override syntax", "", ["round.beta"], ["expected key=value"]),
    ("scorer kind", "judge:\n  scorers: [{kind: sentimant}]\n", [], ["judge.scorers[0].kind", "did you mean 'sentiment'"]),
    ("scorer option", "judge:\n  scorers: [{kind: function, options: {pth: x}}]\n", [], ["options.pth", "path"]),
    ("scorer import", "judge:\n  scorers: [{kind: function, options: {path: 'nope.mod:f'}}]\n", [],
     ["nope.mod:f", "cannot import"]),
    ("tokens budget", "", ["generator.max_new_tokens=300"], ["generator.max_new_tokens", "max_model_len"]),
    ("prompt file missing", SMOKE, ["data.prompts=/nonexistent/prompts.txt"], ["data.prompts", "not found"]),
    ("prompt file empty", SMOKE, ["data.prompts=@empty.txt"], ["data.prompts", "no prompts"]),
    ("prompt file not UTF-8", SMOKE, ["data.prompts=@latin1.txt"], ["data.prompts", "not UTF-8"]),
    ("prompt file wrong column", SMOKE, ["data.prompts=@wrong_column.jsonl"], ["'prompt'", "['text']"]),
    ("prompt file bad JSON", SMOKE, ["data.prompts=@broken.jsonl"], ["line 2", "not a JSON object"]),
    ("model missing", "", ["model.path=/nonexistent/model"], ["model.path", "not found"]),
    ("model not causal", "", ["model.path=@bert"], ["BertForSequenceClassification", "causal LM"]),
    ("model config not JSON", "", ["model.path=@bad_json_model"], ["config.json", "not valid JSON"]),
    ("model without tokenizer", "", ["model.path=@no_tokenizer"], ["no tokenizer"]),
    ("tokenizer without eos/pad", "", ["model.path=@no_eos"], ["eos_token", "pad_token"]),
    ("run dir holds a run", SMOKE, ["--run-dir", "@done"], ["already holds a run", "iterdpo resume"]),
    # Non-finite and out-of-range numbers: refused with the library's own limits, before any model loads.
    ("NaN beta", "", ["round.beta=.nan"], ["round.beta", "finite"]),
    ("infinite learning rate", "", ["round.learning_rate=.inf"], ["round.learning_rate", "finite"]),
    ("NaN gate threshold", "", ["gate.max_toxicity_rise=.nan"], ["gate.max_toxicity_rise", "finite"]),
    ("NaN filter margin", "", ["pairs.min_margin=.nan"], ["pairs.min_margin", "finite"]),
    ("top_p above 1", "", ["generator.top_p=1.5"], ["generator.top_p", "(0, 1]"]),
    ("top_p zero", "", ["generator.top_p=0"], ["generator.top_p", "(0, 1]"]),
    ("negative temperature", "", ["generator.temperature=-0.5"], ["generator.temperature", ">= 0"]),
    ("removed engine memory share", "", ["generator.gpu_memory_utilization=0.5"],
     ["generator.gpu_memory_utilization", "kv_cache_gib"]),
    ("toxicity threshold", "", ["safety.toxicity_threshold=2"], ["safety.toxicity_threshold", "[0, 1]"]),
    # Settings that cannot train, or cannot fit the model.
    ("one sample per prompt", SMOKE, ["round.samples_per_prompt=1"], ["samples_per_prompt", "cannot form a pair"]),
    ("context beyond the model", SMOKE, ["generator.max_model_len=4096", "generator.max_new_tokens=64"],
     ["generator.max_model_len", "512 positions"]),
    ("safety answers beyond the context", SMOKE, ["safety.max_new_tokens=250"], ["safety.max_new_tokens",
                                                                                  "max_model_len=256"]),
    ("YAML key twice", None, ["@duplicate.yaml"], ["'round' appears twice", "line 1", "line 4"]),
    # Model folders, checked before any actor starts.
    ("truncated weights", "", ["model.path=@truncated"], ["model.safetensors", "truncated"]),
    ("corrupt weight header", "", ["model.path=@corrupt"], ["model.safetensors", "corrupt header"]),
    ("pickled weights", "", ["model.path=@pickled"], ["pytorch_model.bin", "pickles are never loaded"]),
    ("reward model missing", SMOKE, ["judge.scorers=[{kind: hf_reward_model, options: {path: /nonexistent/rm}}]"],
     ["hf_reward_model.path", "/nonexistent/rm", "not found"]),
    ("reward model not a classifier", SMOKE, ["judge.scorers=[{kind: hf_reward_model, options: {path: @truncated}}]"],
     ["hf_reward_model.path", "expected a *ForSequenceClassification"]),
]


@pytest.mark.parametrize(("name", "yaml_text", "extra", "words"), CASES, ids=[case[0] for case in CASES])
def test_bad_input(tmp_path, capsys, name, yaml_text, extra, words):
    _files(tmp_path)
    extra = [arg.replace("@", f"{tmp_path}/") for arg in extra]
    if extra and extra[0].endswith(".yaml"):
        argv = ["run", *extra]
    else:
        config = tmp_path / "config.yaml"
        config.write_text(yaml_text)
        argv = ["run", str(config), *extra]
    if "--run-dir" not in argv:
        argv += ["--run-dir", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["resume", "/nonexistent/run"], ["not a run directory"]),
        (["export", "@done", "@out"], ["no saved policy", "kept checkpoints: none"]),
        (["report", "/nonexistent/run"], ["no metrics.jsonl"]),
    ],
)
def test_bad_run_directories(tmp_path, capsys, argv, words):
    _files(tmp_path)
    assert main([arg.replace("@", f"{tmp_path}/") for arg in argv]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and all(word in lines[0] for word in words), lines
