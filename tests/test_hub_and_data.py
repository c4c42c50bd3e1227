"""Models and prompts as a user brings them: Hub ids resolved by huggingface_hub from a real cache layout (offline),
and prompt sets of every form read through `datasets`, text or conversations."""

import json

import pytest

import hub_standin
from iterdpo.config.schema import DataConfig
from iterdpo.data.prompts import engine_input, load_prompts
from iterdpo.core.errors import ConfigError
from iterdpo.data.hub import HubRef
from iterdpo.data.models import local_path, pin_model, resolve_model
from iterdpo.core.records import Prompt

CONVERSATIONS = hub_standin.conversations(20)


# ---------------------------------------------------------------- models by Hub id


def test_hub_ids_are_told_apart_from_local_paths(tmp_path):
    assert HubRef.parse("Qwen/Qwen2.5-0.5B-Instruct") == HubRef("Qwen/Qwen2.5-0.5B-Instruct")
    assert HubRef.parse("org/name@v1.0") == HubRef("org/name", "v1.0")
    assert HubRef.parse("/abs/folder") is None and HubRef.parse("builtin:tiny-qwen2") is None
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "name").mkdir()
    assert HubRef.parse(str(tmp_path / "org" / "name")) is None  # an existing path is a path


def test_a_hub_id_resolves_through_the_cache_and_is_pinned_to_its_commit(hub):
    folder = resolve_model(hub_standin.POLICY)
    assert folder == hub[hub_standin.POLICY] and (folder / "model.safetensors").is_file()
    commit = hub_standin.commit_of(hub_standin.POLICY)
    assert pin_model(hub_standin.POLICY) == f"{hub_standin.POLICY}@{commit}"
    assert resolve_model(f"{hub_standin.POLICY}@{commit}") == folder  # what every actor and a resume load
    assert local_path(f"{hub_standin.POLICY}@{commit}") == folder
    assert pin_model("builtin:tiny-qwen2") == "builtin:tiny-qwen2"  # other locations are kept as given


def test_a_model_that_is_neither_local_nor_cached_is_one_line(hub):
    with pytest.raises(ConfigError) as caught:
        resolve_model("acme/missing-model")
    message = str(caught.value)
    assert "model.path: model 'acme/missing-model'" in message and "HF_HUB_OFFLINE" in message
    assert str(hub[hub_standin.POLICY]).split("/models--")[0] in message and "\n" not in message
    with pytest.raises(ConfigError, match=r"'acme/tiny-chat@v9' is neither a local folder"):
        resolve_model(f"{hub_standin.POLICY}@v9")
    with pytest.raises(ConfigError, match="expected a causal LM"):
        resolve_model(hub_standin.REWARD_MODEL)
    assert resolve_model(hub_standin.REWARD_MODEL, "hf_reward_model.path", kind="classifier").is_dir()


# ---------------------------------------------------------------- prompts through datasets


def _write(tmp_path, kind: str, rows: list[dict], name: str = "prompts"):
    import datasets

    ds = datasets.Dataset.from_list(rows)
    path = tmp_path / f"{name}.{kind}"
    if kind == "parquet":
        ds.to_parquet(str(path))
    elif kind == "csv":
        ds.to_csv(str(path), index=False)
    elif kind in ("json", "jsonl"):
        ds.to_json(str(path), lines=kind == "jsonl")
        if kind == "json":  # a JSON array, as people export it
            path.write_text(json.dumps(rows))
    elif kind == "arrow":
        path = tmp_path / "arrow"
        ds.save_to_disk(str(path))
        (file,) = path.glob("*.arrow")
        return file
    return path


@pytest.mark.parametrize("kind", ["parquet", "csv", "json", "jsonl", "arrow"])
def test_text_prompts_from_every_file_format(tmp_path, kind):
    rows = [{"question": f"Prompt number {i}", "id": i} for i in range(12)]
    path = _write(tmp_path, kind, rows)
    split = load_prompts(DataConfig(prompts=str(path), prompt_field="question", eval_prompts=2), seed=0)
    texts = sorted(p.text for p in split.train + split.eval)
    assert texts == sorted(row["question"] for row in rows) and len(split.eval) == 2
    assert all(p.messages is None for p in split.train)


def test_a_conversation_becomes_the_prompt_up_to_its_last_user_turn(tmp_path, hub):
    path = _write(tmp_path, "parquet", [{"messages": turns} for turns in CONVERSATIONS])
    split = load_prompts(DataConfig(prompts=str(path), prompt_field="messages", eval_prompts=4), seed=0)
    by_text = {p.text: p for p in split.train + split.eval}
    assert len(by_text) == len(CONVERSATIONS)
    for turns in CONVERSATIONS:
        last_user = max(i for i, m in enumerate(turns) if m["role"] == "user")
        prompt = by_text[turns[last_user]["content"]]
        assert prompt.messages == turns[: last_user + 1] and prompt.messages[-1]["role"] == "user"
    assert any(len(p.messages) == 4 for p in by_text.values())  # a system turn and two user turns kept

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(hub_standin.POLICY))
    prompt = by_text[CONVERSATIONS[3][-1]["content"]]
    rendered = "".join(f"<|{m['role']}|>{m['content']}\n" for m in prompt.messages) + "<|assistant|>"
    assert engine_input(tokenizer, prompt, chat=False) == tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert engine_input(tokenizer, Prompt("Just text"), chat=False) == "Just text"


def test_saved_folders_local_data_sets_and_hub_data_sets(tmp_path, hub):
    import datasets

    rows = [{"messages": turns} for turns in CONVERSATIONS]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:15]),
                          "test": datasets.Dataset.from_list(rows[15:])}).save_to_disk(str(tmp_path / "saved"))
    saved = load_prompts(DataConfig(prompts=str(tmp_path / "saved"), prompt_field="messages", eval_prompts=3,
                                    eval_split="test"), seed=0)
    assert (len(saved.train), len(saved.eval)) == (15, 3)
    assert {p.text for p in saved.eval} <= {turns[-1]["content"] for turns in CONVERSATIONS[15:]} | {
        turns[max(i for i, m in enumerate(turns) if m["role"] == "user")]["content"] for turns in CONVERSATIONS[15:]}

    local = tmp_path / "local"
    (local / "data").mkdir(parents=True)
    datasets.Dataset.from_list(rows).to_parquet(str(local / "data" / "train-00000-of-00001.parquet"))
    assert len(load_prompts(DataConfig(prompts=str(local), prompt_field="messages", eval_prompts=2), 0).train) == 18

    hub_split = load_prompts(DataConfig(prompts=hub_standin.PROMPTS, prompt_field="messages", eval_prompts=5,
                                        eval_split="test"), seed=0)
    assert (len(hub_split.train), len(hub_split.eval)) == (40, 5) and hub_split.conversations
    assert all(any(str(n) in p.text for n in range(1000, 1012)) for p in hub_split.eval)  # from split test
    pinned = f"{hub_standin.PROMPTS}@{hub_standin.commit_of(hub_standin.PROMPTS)}"
    assert len(load_prompts(DataConfig(prompts=pinned, prompt_field="messages", eval_prompts=5), 0).train) == 35


@pytest.mark.parametrize(("rows", "field", "split", "words"), [
    ([{"text": "a"}] * 3, "prompt", "train", ["data.prompt_field", "no column 'prompt'", "['text']"]),
    ([{"prompt": 3}, {"prompt": 4}], "prompt", "train", ["data.prompt_field", "column 'prompt'", "holds int",
                                                         "conversation"]),
    ([{"prompt": [{"role": "assistant", "content": "hi"}]}], "prompt", "train", ["without a user turn", "row 0"]),
    ([{"prompt": "a"}], "prompt", "validation", ["data.split", "no split 'validation'"]),
])
def test_bad_prompt_sets_are_one_line_naming_file_split_and_column(tmp_path, rows, field, split, words):
    import datasets

    path = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(path))
    with pytest.raises(ConfigError) as caught:
        load_prompts(DataConfig(prompts=str(path), prompt_field=field, split=split, eval_prompts=1), seed=0)
    assert all(word in str(caught.value) for word in words), str(caught.value)
    assert "\n" not in str(caught.value)


def test_an_empty_split_and_an_unknown_data_set_are_one_line(tmp_path, hub):
    import datasets

    datasets.Dataset.from_list([{"prompt": "x"}]).select([]).to_parquet(str(tmp_path / "empty.parquet"))
    with pytest.raises(ConfigError, match=r"data.split: '.*empty.parquet' split 'train' is empty"):
        load_prompts(DataConfig(prompts=str(tmp_path / "empty.parquet"), eval_prompts=1), seed=0)
    with pytest.raises(ConfigError, match="data.prompts: data set 'acme/no-such-prompts' is neither a local folder"):
        load_prompts(DataConfig(prompts="acme/no-such-prompts"), seed=0)
    with pytest.raises(ConfigError, match="no split 'dev'"):
        load_prompts(DataConfig(prompts=hub_standin.PROMPTS, prompt_field="messages", split="dev"), seed=0)
