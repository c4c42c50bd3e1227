"""The HTTP side of served judges against a stand-in OpenAI-compatible server on 127.0.0.1 (plain `http.server`,
no vLLM: no /tokenize, so the ratings are read from the top log-probs by text), through the real `httpx` client:
the expected rating computed by hand, a refused request dropping only its sample, retries on 429 and 503 with the
attempts counted, and each failure one line."""

import http.server
import json
import math
import threading

import pytest

from iterdpo.config.scorers import OpenAIJudgeOptions, PairwiseJudgeOptions
from iterdpo.core.errors import ConfigError
from iterdpo.scorers.endpoint import EndpointDown
from iterdpo.scorers.pairwise import PairwiseJudgeScorer
from iterdpo.scorers.remote import OpenAIJudgeScorer, probe_openai_judge

TOP = {"5": -0.1, "1": -2.0, "x": -3.0}  # the stand-in judge's next-token log-probs: ratings 2-4 not among them


class StandIn(http.server.BaseHTTPRequestHandler):
    requests: list[str] = []
    flaky_left = {"FLAKY": 1}

    def _send(self, body, status=200, raw=None):
        data = raw if raw is not None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802
        self._send({"data": [{"id": "judge"}]}) if self.path == "/v1/models" else self._send({}, 404)

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        prompt = body.get("prompt", "")
        StandIn.requests.append(prompt)
        if self.path != "/v1/completions":
            return self._send({"detail": "Not Found"}, 404)
        if "TOO LONG" in prompt:
            return self._send({"error": {"message": "This model's maximum context length is 512 tokens"}}, 400)
        if "DOWN" in prompt:
            return self._send({"error": {"message": "overloaded"}}, 503)
        if "HTML" in prompt:
            return self._send(None, raw=b"<html>a web page</html>")
        if "FLAKY" in prompt and StandIn.flaky_left["FLAKY"]:
            StandIn.flaky_left["FLAKY"] -= 1
            return self._send({"error": {"message": "slow down"}}, 429)
        top = dict(TOP)
        if "[Reply A]\nbetter" in prompt:  # a pairwise question: the reply shown as A is "better"
            top = {"A": -0.2, "B": -1.8}
        elif "[Reply A]" in prompt:
            top = {"A": -1.8, "B": -0.2}
        self._send({"choices": [{"text": "5", "logprobs": {"top_logprobs": [top]}}]})

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()


def _options(base_url, **extra):
    return OpenAIJudgeOptions(**{"base_url": base_url, "model": "judge", "api": "completions", "backoff_s": 0.01,
                                 "retries": 2, **extra})


def test_the_expected_rating_from_the_top_log_probs(server):
    scorer = OpenAIJudgeScorer(_options(server))
    assert scorer.choices.token_ids is None  # no /tokenize: read by text
    p1, p5 = math.exp(-2.0), math.exp(-0.1)
    assert scorer(["q"], ["a"]) == [pytest.approx((1 * p1 + 5 * p5) / (p1 + p5), abs=1e-12)]


def test_a_refused_request_drops_only_its_sample(server):
    scores = OpenAIJudgeScorer(_options(server, concurrency=3))(["q"] * 3, ["fine", "TOO LONG", "fine"])
    assert math.isnan(scores[1]) and scores[0] == scores[2] and math.isfinite(scores[0])


def test_429_is_retried(server):
    StandIn.requests.clear()
    scores = OpenAIJudgeScorer(_options(server))(["q"], ["FLAKY"])
    assert math.isfinite(scores[0]) and sum("FLAKY" in r for r in StandIn.requests) == 2


def test_a_server_that_stays_down_is_one_line_naming_it_after_its_attempts(server):
    StandIn.requests.clear()
    with pytest.raises(EndpointDown) as failure:
        OpenAIJudgeScorer(_options(server))(["q"], ["DOWN"])
    assert str(failure.value) == f"judge endpoint {server}/completions: HTTP 503: overloaded (3 attempts)"
    assert sum("DOWN" in r for r in StandIn.requests) == 3


def test_an_answer_that_is_not_json_is_one_line(server):
    with pytest.raises(EndpointDown, match="the answer is not JSON"):
        OpenAIJudgeScorer(_options(server))(["q"], ["HTML"])


def test_probe_lines(server, monkeypatch):
    assert "the top 20 log-probs" in probe_openai_judge(_options(server))
    monkeypatch.delenv("ITERDPO_TEST_UNSET_KEY", raising=False)
    with pytest.raises(ConfigError, match="openai_judge.api_key_env: the variable ITERDPO_TEST_UNSET_KEY is not set"):
        probe_openai_judge(_options(server, api_key_env="ITERDPO_TEST_UNSET_KEY"))
    with pytest.raises(ConfigError, match=r"none of \['2', '3'\] is among the top 20"):
        probe_openai_judge(_options(server, ratings=["2", "3"]))
    with pytest.raises(ConfigError, match="HTTP 404"):
        probe_openai_judge(_options(server, api="chat"))


def test_a_pairwise_comparison_the_server_refuses_is_left_out(server):
    options = PairwiseJudgeOptions(base_url=server, model="judge", api="completions", backoff_s=0.01)
    scores = PairwiseJudgeScorer(options)(["q"] * 3, ["better", "worse", "TOO LONG"])
    assert scores[0] > scores[1]  # the one comparison read: A's preference both ways is "better"
    assert math.isnan(scores[2]) and scores.counts["comparisons"] == 1  # in no comparison read: dropped
