"""A stand-in for the completions endpoint of vLLM's OpenAI server, on 127.0.0.1, for CPU tests.

It answers `POST /v1/completions` with a token-id prompt the way vLLM (>= 0.10.2) does when asked
for `return_token_ids` and `logprobs: 0`: `choices[0].token_ids`, `choices[0].logprobs.token_logprobs`,
`finish_reason`, `prompt_token_ids`. The sampled ids and logprobs come from ajet's ScriptedEngine, so
tests know exactly what a model "sampled". `GET /health` answers 200, as Trinity's ModelWrapper expects.

    with serve_completions(ScriptedEngine(tokenizer, reply_fn)) as (base_url, requests):
        ...   # requests: the JSON bodies received, in order
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from env_service_reference import serve_in_thread
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ajet.engine.base import SamplingParams
from ajet.engine.scripted import ScriptedEngine


def create_app(engine: ScriptedEngine, requests: list[dict[str, Any]]) -> FastAPI:
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/completions")
    async def completions(request: Request) -> JSONResponse:
        body = await request.json()
        requests.append(body)
        prompt = body["prompt"]
        if not (isinstance(prompt, list) and all(isinstance(t, int) for t in prompt)):
            return JSONResponse({"error": {"message": "this fake takes token-id prompts only"}}, status_code=400)
        params = SamplingParams(
            max_tokens=int(body.get("max_tokens") or 16),
            temperature=float(body.get("temperature", 1.0)),
            top_p=float(body.get("top_p", 1.0)),
            top_k=int(body.get("top_k", -1)),
            stop_token_ids=list(body.get("stop_token_ids") or []),
        )
        completion = await engine.generate(prompt, params)
        choice = {
            "index": 0,
            "text": engine.tokenizer.decode(completion.token_ids),
            "logprobs": {
                "text_offset": [],
                "token_logprobs": completion.logprobs if body.get("logprobs") is not None else None,
                "tokens": [],
                "top_logprobs": [],
            },
            "finish_reason": completion.finish_reason,
            "stop_reason": None,
            "token_ids": completion.token_ids if body.get("return_token_ids") else None,
            "prompt_token_ids": prompt if body.get("return_token_ids") else None,
        }
        return JSONResponse({"id": "cmpl-fake", "object": "text_completion", "model": body.get("model"), "choices": [choice]})

    return app


@contextlib.contextmanager
def serve_completions(engine: ScriptedEngine) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """Serve the fake on a free 127.0.0.1 port; yields (base address without /v1, received bodies)."""
    requests: list[dict[str, Any]] = []
    with serve_in_thread(create_app(engine, requests)) as base_url:
        yield base_url, requests
