"""Judges behind real vLLM servers on 127.0.0.1 (`tests/served.py`): the built-in tiny model with a chat template as
an LLM judge (behind an API key), and the stand-in reward model under vLLM's pooling runner.

- `openai_judge` scores what transformers computes on the same rubric (the in-actor `llm_judge`'s reference);
  `remote_reward_model` scores what the in-actor `hf_reward_model` scores; `pairwise_judge` reads the same
  P(first better) as transformers.
- Each failure a user meets is one line before any actor starts (`iterdpo check` too).
- The smoke config runs end to end with all three scorers; a run whose judge server dies in round 2 stops with one
  line naming the endpoint, keeps round 1, and `iterdpo resume` (the server back) ends with the metrics of the
  uninterrupted run.
"""

import http.server
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import hub_standin
from cli_runs import ROOT, cli, comparable, rows
from served import Server

pytestmark = pytest.mark.slow

KEY_ENV, KEY = "ITERDPO_TEST_JUDGE_KEY", "s3cret-for-tests"
CONVERSATION = [{"role": "user", "content": "Write one line about the sea."}]
RESPONSES = ["The sea is wide and blue.", "No.", "Waves fold over the grey stones at dawn.", "sea sea sea"]


@pytest.fixture(scope="module")
def servers(hub, tmp_path_factory):
    os.environ[KEY_ENV] = KEY
    logs = tmp_path_factory.mktemp("servers")
    judge = Server(hub[hub_standin.POLICY], "judge", logs / "judge.log", "--api-key", KEY).launch()
    rm = Server(hub[hub_standin.REWARD_MODEL], "rm", logs / "rm.log", "--runner", "pooling").launch()
    try:
        yield judge.wait(), rm.wait()
    finally:
        judge.stop()
        rm.stop()


def _judge_options(judge: Server, **extra):
    return {"base_url": judge.root + "/v1", "model": "judge", "api_key_env": KEY_ENV, **extra}


def _hf_choice_probs(folder: Path, text: str, words: list[str]) -> list[float]:
    """transformers' next-token distribution after `text` as a chat turn, renormalised over `words`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    ids = [tokenizer.encode(word, add_special_tokens=False)[0] for word in words]
    with torch.no_grad():
        logits = model(tokenizer(rendered, return_tensors="pt", add_special_tokens=False).input_ids).logits[0, -1]
    return logits[ids].softmax(-1).tolist()


def test_openai_judge_scores_what_transformers_computes(servers, hub):
    from iterdpo.config.scorers import OpenAIJudgeOptions
    from iterdpo.scorers.llm_judge import DEFAULT_RUBRIC, fill
    from iterdpo.scorers.remote import OpenAIJudgeScorer

    judge, _ = servers
    scorer = OpenAIJudgeScorer(OpenAIJudgeOptions(**_judge_options(judge)))
    scores = scorer([CONVERSATION[0]["content"]] * 4, RESPONSES, [CONVERSATION] * 4)
    expected = []
    for response in RESPONSES:
        text = fill(DEFAULT_RUBRIC, {"prompt": CONVERSATION[0]["content"], "response": response})
        probs = _hf_choice_probs(hub[hub_standin.POLICY], text, ["1", "2", "3", "4", "5"])
        expected.append(sum(value * p for value, p in zip([1, 2, 3, 4, 5], probs)))
    assert scores == pytest.approx(expected, abs=1e-4)
    assert len({round(s, 6) for s in scores}) > 1


@pytest.mark.parametrize("input_format", ["chat", "concat"])
def test_remote_reward_model_scores_what_hf_reward_model_scores(servers, hub, input_format):
    from iterdpo.config.scorers import RemoteRewardModelOptions
    from iterdpo.scorers.remote import RemoteRewardModelScorer
    from iterdpo.scorers.reward_model import HFRewardModelScorer

    _, rm = servers
    prompts = [CONVERSATION[0]["content"]] * 4
    remote = RemoteRewardModelScorer(RemoteRewardModelOptions(base_url=rm.root, model="rm",
                                                              input_format=input_format))
    local = HFRewardModelScorer(str(hub[hub_standin.REWARD_MODEL]), input_format=input_format)
    expected = local(prompts, RESPONSES, [CONVERSATION] * 4)
    assert remote(prompts, RESPONSES, [CONVERSATION] * 4) == pytest.approx(expected, abs=1e-5)


def test_pairwise_judge_reads_the_comparison_as_transformers_does(servers, hub):
    from iterdpo.config.scorers import PairwiseJudgeOptions
    from iterdpo.scorers.llm_judge import fill
    from iterdpo.scorers.pairwise import DEFAULT_TEMPLATE, PairwiseJudgeScorer

    judge, _ = servers
    scorer = PairwiseJudgeScorer(PairwiseJudgeOptions(**_judge_options(judge)))
    text = fill(DEFAULT_TEMPLATE, {"prompt": CONVERSATION[0]["content"], "response_a": RESPONSES[0],
                                   "response_b": RESPONSES[1]})
    [served] = scorer.choices.probs([text])
    assert served == pytest.approx(_hf_choice_probs(hub[hub_standin.POLICY], text, ["A", "B"]), abs=1e-5)
    scores = scorer([CONVERSATION[0]["content"]] * 4, RESPONSES, [CONVERSATION] * 4)
    assert all(math.isfinite(s) for s in scores) and abs(sum(scores)) < 1e-9  # centred by the prior
    counts = scores.counts
    assert counts["comparisons"] <= 6 and 0 <= counts["flipped"] <= counts["comparisons"]


class _NoLogprobs(http.server.BaseHTTPRequestHandler):
    """A stand-in OpenAI-compatible server that answers without log-probs (as some hosted APIs do)."""

    def _send(self, body: dict, status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        self._send({"data": [{"id": "judge"}]} if self.path == "/v1/models" else {"detail": "Not Found"},
                   200 if self.path == "/v1/models" else 404)

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers["content-length"]))
        if self.path.endswith("/completions"):
            self._send({"choices": [{"message": {"content": "4"}, "text": "4", "logprobs": None}]})
        else:
            self._send({"detail": "Not Found"}, 404)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def no_logprobs_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NoLogprobs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_each_failure_is_one_line_before_any_actor_starts(servers, no_logprobs_server, monkeypatch):
    from iterdpo.config.scorers import ScorerSpec
    from iterdpo.core.errors import ConfigError
    from iterdpo.core.ports import free_port
    from iterdpo.scorers.checks import check_scorer

    judge, rm = servers
    monkeypatch.setenv("ITERDPO_TEST_WRONG_KEY", "not-the-key")
    monkeypatch.delenv("ITERDPO_TEST_NO_SUCH_KEY", raising=False)
    cases = [
        (ScorerSpec("openai_judge", options=_judge_options(judge, base_url=f"http://127.0.0.1:{free_port()}/v1")),
         r"cannot connect \(ConnectError"),
        (ScorerSpec("openai_judge", options=_judge_options(judge, model="judge-7b")),
         "openai_judge.model: 'judge-7b' is not served at"),
        (ScorerSpec("openai_judge", options=_judge_options(judge, api_key_env="ITERDPO_TEST_WRONG_KEY")),
         "HTTP 401"),
        (ScorerSpec("openai_judge", options=_judge_options(judge, api_key_env="ITERDPO_TEST_NO_SUCH_KEY")),
         "openai_judge.api_key_env: the variable ITERDPO_TEST_NO_SUCH_KEY is not set"),
        (ScorerSpec("openai_judge", options=_judge_options(judge, ratings=["1000000", "2"])),
         "openai_judge.ratings: '1000000' is [0-9]+ tokens"),
        (ScorerSpec("openai_judge", options={"base_url": no_logprobs_server + "/v1", "model": "judge"}),
         "the answer has no log-probs"),
        (ScorerSpec("pairwise_judge", options={"base_url": no_logprobs_server + "/v1", "model": "judge"}),
         "the answer has no log-probs"),
        (ScorerSpec("remote_reward_model", options={"base_url": judge.root, "model": "judge",
                                                    "api_key_env": KEY_ENV}),
         "remote_reward_model: .*classify"),
        (ScorerSpec("pairwise_judge", options=_judge_options(judge, choices=["A", "Zebra crossing"])),
         "pairwise_judge.choices: 'Zebra crossing' is [0-9]+ tokens"),
    ]
    for spec, words in cases:
        with pytest.raises(ConfigError, match=words) as failure:
            check_scorer(spec)
        assert "\n" not in str(failure.value)
    # Through the command: exit 2, one line, before any actor.
    done = subprocess.run([sys.executable, "-m", "iterdpo", "check", "configs/smoke.yaml",
                           f"judge.scorers=[{{kind: openai_judge, options: {{base_url: '{judge.root}/v1', "
                           f"model: judge-7b, api_key_env: {KEY_ENV}}}}}]"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and "'judge-7b' is not served" in lines[0], done.stderr


def _scorers(judge: Server, rm: Server) -> str:
    """All three new kinds at once, one request at a time (so a rerun batches exactly as the first run did)."""
    common = f"api_key_env: {KEY_ENV}, concurrency: 1, retries: 1, backoff_s: 0.2"
    return ("judge.scorers=["
            f"{{kind: openai_judge, options: {{base_url: '{judge.root}/v1', model: judge, {common}}}}}, "
            f"{{kind: pairwise_judge, weight: 0.5, options: {{base_url: '{judge.root}/v1', model: judge, "
            f"max_comparisons: 4, {common}}}}}, "
            f"{{kind: remote_reward_model, weight: 0.5, options: {{base_url: '{rm.root}', model: rm, concurrency: 1, "
            "retries: 1, backoff_s: 0.2}}]")


@pytest.fixture(scope="module")
def uninterrupted(servers, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("remote") / "run"
    process = cli("run", "configs/smoke.yaml", _scorers(*servers), "--run-dir", str(run_dir))
    assert process.wait(timeout=900) == 0, process.stderr.read()[-3000:]
    return rows(run_dir)


def test_the_smoke_config_runs_with_every_remote_scorer(uninterrupted):
    trained = [row for row in uninterrupted if "pairs/count" in row]  # after the row of pi0's evaluation
    assert len(trained) == 2
    for row in trained:
        assert row["pairs/count"] > 0
        for name in ("openai_judge", "pairwise_judge", "remote_reward_model"):
            assert row[f"judge/{name}/dropped"] == 0
        assert 0.0 <= row["judge/pairwise_judge/position_bias"] <= 1.0


def test_a_judge_server_that_dies_stops_the_run_in_one_line_and_resume_matches(servers, uninterrupted, tmp_path):
    judge, rm = servers
    run_dir = tmp_path / "run"
    process = cli("run", "configs/smoke.yaml", _scorers(judge, rm), "--run-dir", str(run_dir))
    deadline = time.monotonic() + 900
    while not (run_dir / "round_002").is_dir():  # round 1 finished: the server dies as round 2 starts
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()[-3000:]
        time.sleep(0.05)
    judge.stop()
    try:
        assert process.wait(timeout=600) != 0
        lines = [line for line in process.stderr.read().splitlines() if line.strip()]
        assert f"judge endpoint {judge.root}/v1" in lines[-1] and "attempts" in lines[-1], lines[-5:]
        assert len(rows(run_dir)) == len(uninterrupted) - 1  # round 1 kept
    finally:
        judge.start()  # back, on the same port
    resumed = cli("resume", str(run_dir))
    assert resumed.wait(timeout=900) == 0, resumed.stderr.read()[-3000:]
    finished = rows(run_dir)
    assert [comparable(row) for row in finished] == [comparable(row) for row in uninterrupted]


def test_pairwise_judge_in_the_judge_actor_scores_as_the_served_one(servers, hub, ray_session):
    """The same judge model compared in a judge actor's own engine and behind the server: the same scores."""
    from iterdpo.config.schema import JudgeConfig
    from iterdpo.config.scorers import ScorerSpec
    from iterdpo.rounds.groups import JudgeGroup
    from iterdpo.rounds.runtime import actor_env

    judge, _ = servers
    in_actor = {"model": hub_standin.POLICY, "kv_cache_gib": 0.1, "dtype": "float32", "max_model_len": 512}
    specs = [ScorerSpec("pairwise_judge", name="here", options=in_actor),
             ScorerSpec("pairwise_judge", name="served", weight=0.0, options=_judge_options(judge))]
    prompts = [CONVERSATION[0]["content"]] * 4 + ["Name a colour."] * 3
    responses = RESPONSES + ["Blue.", "A colour.", "Teal, like the sea at noon."]
    conversations = [CONVERSATION] * 4 + [[{"role": "user", "content": "Name a colour."}]] * 3
    group = JudgeGroup.create(JudgeConfig(scorers=specs, replicas=2, num_cpus=0.25),
                              {"runtime_env": {"env_vars": actor_env()}})
    try:
        result, _ = group.score(prompts, responses, conversations, toxicity=False)
    finally:
        group.kill()
    assert result.components["here"] == pytest.approx(result.components["served"], abs=1e-5)
    assert len({round(s, 6) for s in result.components["here"]}) > 1
    metrics = result.metrics()
    assert metrics["judge/here/position_bias"] == pytest.approx(metrics["judge/served/position_bias"])
