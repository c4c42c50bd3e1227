"""A judge served elsewhere, over HTTP (`httpx`): bounded concurrency, a timeout per request, retries with backoff.

A request that times out, cannot connect, or gets 429 or a 5xx is retried up to `retries` more times, waiting
`backoff_s`, then twice that, ... (at most 30 s). What still fails then means the server is gone or overloaded:
`EndpointDown` (a `ScorerError`, so the judge stops the round with one line naming the endpoint, and every finished
round is kept for `iterdpo resume`). A 400, 413 or 422 refuses one request's content (a response too long for the
judge's context, say): `RequestRefused`, which the robust scorer isolates, so only those samples are dropped. A 401,
403 or 404 will not change by retrying: `EndpointDown` at once (the pre-flight probe normally catches these).
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from iterdpo.scorers.robust import ScorerError

RETRIED_STATUS = (429, 500, 502, 503, 504)
REFUSED_STATUS = (400, 413, 422)
MAX_BACKOFF_S = 30.0
# httpx logs every request at INFO: thousands of lines a round, and noise in `iterdpo check`'s one-line errors.
logging.getLogger("httpx").setLevel(logging.WARNING)


class EndpointDown(ScorerError):
    """The endpoint cannot answer (after retries, or with an error retrying cannot change)."""


class RequestRefused(RuntimeError):
    """The endpoint refused one request's content; its samples are dropped, the run goes on."""


def server_root(base_url: str) -> str:
    """The server behind an OpenAI-style base URL (``http://host:8000/v1`` -> ``http://host:8000``), where vLLM
    serves `/tokenize` and `/classify`."""
    url = base_url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def _reason(response: Any) -> str:
    try:
        body = response.json()
        message = body.get("error", body.get("detail", body)) if isinstance(body, dict) else body
        if isinstance(message, dict):
            message = message.get("message", message)
    except ValueError:
        message = response.text
    return " ".join(str(message).split())[:200]


class Endpoint:
    """POSTs JSON to one server; `post_many` sends up to `concurrency` requests at once, answers in order."""

    def __init__(self, base_url: str, api_key_env: str = "", timeout_s: float = 60.0, retries: int = 4,
                 concurrency: int = 8, backoff_s: float = 1.0) -> None:
        import httpx

        self.base_url = base_url.rstrip("/")
        key = os.environ.get(api_key_env, "") if api_key_env else ""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(headers=headers, timeout=timeout_s,
                                   limits=httpx.Limits(max_connections=concurrency))
        self.retries, self.concurrency, self.backoff_s = retries, concurrency, backoff_s

    def get(self, path: str) -> Any:
        return self._send("GET", path, None)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self._send("POST", path, body)

    def post_many(self, path: str, bodies: list[dict[str, Any]]) -> list[Any]:
        """The answers in order; None for a request whose content the server refused (`RequestRefused`)."""
        def post(body: dict[str, Any]) -> Any:
            try:
                return self.post(path, body)
            except RequestRefused:
                return None

        if len(bodies) <= 1:
            return [post(body) for body in bodies]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(bodies))) as pool:
            return list(pool.map(post, bodies))

    def _send(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        import httpx

        url = self.base_url + path
        for attempt in range(self.retries + 1):
            try:
                response = self.client.request(method, url, json=body)
            except httpx.TimeoutException:
                problem = f"no answer within {self.client.timeout.read:g} s"
            except httpx.TransportError as err:
                problem = f"cannot connect ({type(err).__name__}: {' '.join(str(err).split())[:120]})"
            else:
                if response.status_code < 300:
                    try:
                        return response.json()
                    except ValueError:
                        raise EndpointDown(f"judge endpoint {url}: the answer is not JSON (is this the API's "
                                           "URL?)") from None
                problem = f"HTTP {response.status_code}: {_reason(response)}"
                if response.status_code in REFUSED_STATUS:
                    raise RequestRefused(f"{url} refused the request ({problem})")
                if response.status_code not in RETRIED_STATUS:
                    raise EndpointDown(f"judge endpoint {url}: {problem}")
            if attempt < self.retries:
                time.sleep(min(MAX_BACKOFF_S, self.backoff_s * 2**attempt))
        attempts = self.retries + 1
        raise EndpointDown(f"judge endpoint {url}: {problem} ({attempts} attempt{'s' if attempts > 1 else ''})")
