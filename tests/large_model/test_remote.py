"""The OpenAI-compatible backend against an in-memory /v1/completions server running the real tiny model."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from core.errors import ModelError
from large_model.encoding import Example
from large_model.inference import Explainer
from large_model.remote import OpenAIExplainer
from tests.large_model.conftest import TOY_LABELS


class CompletionsServer:
    """A WSGI app answering /v1/completions like vLLM: echo + prompt log-probabilities, greedy text."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.requests: list[dict[str, Any]] = []

    @torch.no_grad()
    def _echo(self, prompt: str) -> dict[str, Any]:
        enc = self.tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
        ids = enc["input_ids"]
        logp = torch.log_softmax(self.model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
        values = [None] + [float(logp[i - 1, ids[i]]) for i in range(1, len(ids))]
        return {
            "tokens": self.tokenizer.convert_ids_to_tokens(ids),
            "token_logprobs": values,
            "text_offset": [start for start, _ in enc["offset_mapping"]],
        }

    @torch.no_grad()
    def _generate(self, prompt: str, body: dict[str, Any]) -> dict[str, Any]:
        """Greedy tokens, cut at the first stop string as vLLM does (kept with include_stop_str_in_output)."""
        ids = torch.tensor([self.tokenizer(prompt, add_special_tokens=False)["input_ids"]])
        out = self.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=body["max_tokens"],
            do_sample=False,
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        new = out[0, ids.shape[1] :].tolist()
        finish = "stop" if new and new[-1] == self.tokenizer.eos_token_id else "length"
        for n in range(1, len(new) + 1):  # vLLM checks the stop strings after each token
            text = str(self.tokenizer.decode(new[:n], skip_special_tokens=True))
            hits = [(text.find(stop), stop) for stop in body.get("stop") or [] if stop in text]
            if hits:
                at, stop = min(hits)
                text = text[: at + len(stop)] if body.get("include_stop_str_in_output") else text[:at]
                new, finish = new[:n], "stop"
                break
        else:
            text = str(self.tokenizer.decode(new, skip_special_tokens=True))
        return {"text": text, "finish_reason": finish, "tokens": len(new)}

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        body = json.loads(environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)))
        self.requests.append(body)
        if environ["PATH_INFO"] != "/v1/completions":
            start_response("404 Not Found", [("Content-Type", "application/json")])
            return [b'{"error": "not found"}']
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        choices, tokens = [], 0
        for index, prompt in enumerate(prompts):
            if body.get("echo"):
                choices.append({"index": index, "text": prompt, "logprobs": self._echo(prompt)})
            else:
                result = self._generate(prompt, body)
                tokens += result["tokens"]
                choices.append({"index": index, "text": result["text"], "finish_reason": result["finish_reason"]})
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps({"choices": choices, "usage": {"completion_tokens": tokens}}).encode()]


@pytest.fixture(scope="module")
def served(
    label_trained_model: tuple[Any, Any], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, CompletionsServer]:
    model, tokenizer = label_trained_model
    folder = tmp_path_factory.mktemp("served")
    tokenizer.save_pretrained(folder)
    (folder / "labels.json").write_text(json.dumps(TOY_LABELS.to_dict()))
    return folder, CompletionsServer(model, tokenizer)


def test_remote_scoring_and_texts_match_in_process(
    served: tuple[Path, CompletionsServer],
    label_trained_model: tuple[Any, Any],
    toy_split: tuple[list[Example], list[Example]],
) -> None:
    folder, server = served
    client = httpx.Client(transport=httpx.WSGITransport(app=server), base_url="http://vllm")
    remote = OpenAIExplainer("http://vllm", "explainer", folder, client=client, max_new_tokens=40, api_key="k")
    local = Explainer(*label_trained_model, TOY_LABELS, "toy", "tiny", "cpu", max_new_tokens=40)
    for example in toy_split[1][:3]:
        lines = example.log_entries or []
        got, want = remote.explain_detailed(lines), local.explain_detailed(lines)
        assert got.explanation.category == want.explanation.category == example.category
        assert got.explanation.severity == want.explanation.severity
        for label, score in want.category_scores.items():
            assert abs(got.category_scores[label] - score) < 1e-3, (got.category_scores, want.category_scores)
        assert got.explanation.suggested_response == want.explanation.suggested_response
        assert got.generated == want.generated and got.parsed == want.parsed
        assert got.explanation.model == "openai:explainer"
    scoring = [r for r in server.requests if r.get("echo")]
    assert scoring and all(len(r["prompt"]) in (3, 2) for r in scoring)  # one request per field, all labels in it
    texts = [r for r in server.requests if not r.get("echo")]
    assert texts and all(r["stop"][0] == '"' and r["include_stop_str_in_output"] for r in texts)
    assert all(r["prompt"].endswith(('"summary": "', '"root_cause": "', '"suggested_response": "')) for r in texts)


def test_remote_fuses_the_folders_classifier_as_in_process(
    served: tuple[Path, CompletionsServer],
    label_trained_model: tuple[Any, Any],
    toy_split: tuple[list[Example], list[Example]],
    tmp_path: Path,
) -> None:
    """A folder with a category classifier and its weight: the server's label scores are fused with it as the
    in-process explainer fuses its own."""
    import shutil

    from large_model.category_classifier import CLASSIFIER_FILE, fit_category_classifier

    folder, server = served
    fused = tmp_path / "fused"
    shutil.copytree(folder, fused)
    classifier = fit_category_classifier(toy_split[0])
    assert classifier is not None
    classifier.save(fused / CLASSIFIER_FILE)
    (fused / "explainer.json").write_text(json.dumps({"fusion_weight": 0.5}), encoding="utf-8")
    client = httpx.Client(transport=httpx.WSGITransport(app=server), base_url="http://vllm")
    remote = OpenAIExplainer("http://vllm", "explainer", fused, client=client, max_new_tokens=4)
    assert remote.classifier is not None and remote.fusion_weight == 0.5
    local = Explainer(*label_trained_model, TOY_LABELS, "toy", "tiny", "cpu", max_new_tokens=4,
                      classifier=classifier, fusion_weight=0.5)  # fmt: skip
    for example in toy_split[1][:3]:
        lines = example.log_entries or []
        got, want = remote.explain_detailed(lines), local.explain_detailed(lines)
        assert got.explanation.category == want.explanation.category == example.category
        assert got.explanation.confidence == pytest.approx(want.explanation.confidence, abs=1e-3)
        assert got.extra["classifier_scores"] == want.extra["classifier_scores"]


def test_remote_errors_are_model_errors(served: tuple[Path, CompletionsServer]) -> None:
    folder, _ = served

    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, text="overloaded")

    client = httpx.Client(transport=httpx.MockTransport(refuse), base_url="http://vllm")
    remote = OpenAIExplainer("http://vllm", "explainer", folder, client=client)
    with pytest.raises(ModelError, match="503"):
        remote.explain(["ERROR x"])


def test_outages_are_told_from_bad_requests(served: tuple[Path, CompletionsServer]) -> None:
    """Refused, timed out and 5xx are BackendUnavailable (retry later); a 400 is a plain ModelError (bad input)."""
    from core.errors import BackendUnavailable
    from tests.llm_stub import StubLLM

    folder, _ = served
    stub = StubLLM()  # not started: the port refuses connections
    remote = OpenAIExplainer(stub.url, "explainer", folder, timeout=1.0)
    with pytest.raises(BackendUnavailable, match="did not answer"):
        remote.explain(["ERROR x"])
    with stub.start():
        stub.status = 503
        with pytest.raises(BackendUnavailable, match="503"):
            remote.explain(["ERROR x"])
        stub.status = 400
        with pytest.raises(ModelError, match="400") as bad:
            remote.explain(["ERROR x"])
        assert not isinstance(bad.value, BackendUnavailable)
        stub.status, stub.delay = None, 3.0  # slower than the client's 1 s timeout
        with pytest.raises(BackendUnavailable, match="Timeout"):
            remote.explain(["ERROR x"])
        stub.delay = 0.0
        assert remote.explain(["ERROR x"]).summary  # back: it answers


def test_an_explanation_logs_nothing_at_info(
    served: tuple[Path, CompletionsServer], caplog: pytest.LogCaptureFixture
) -> None:
    """Logging as `logtriage serve` sets it up: the HTTP client's line per request (5 per explanation) is gone."""
    from logtriage.cli import CHATTY_LOGGERS, configure_logging

    folder, server = served
    client = httpx.Client(transport=httpx.WSGITransport(app=server), base_url="http://vllm")
    remote = OpenAIExplainer("http://vllm", "explainer", folder, client=client, max_new_tokens=8)
    root = logging.getLogger()
    saved = root.level, {name: logging.getLogger(name).level for name in CHATTY_LOGGERS}
    try:
        configure_logging(verbose=False)
        before = len(server.requests)
        with caplog.at_level(logging.INFO, logger="large_model"):
            caplog.clear()
            remote.explain(["ERROR [orders] call to payments timed out after 30000ms"])
        assert len(server.requests) - before >= 4  # the calls were made (labels, texts) ...
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO] == []  # ... and not logged
    finally:
        root.setLevel(saved[0])
        for name, level in saved[1].items():
            logging.getLogger(name).setLevel(level)


@pytest.mark.parametrize("missing", ["/nonexistent/explainer", "artifacts/nope/", "runs/missing", "../elsewhere"])
@pytest.mark.parametrize("backend", ["inprocess", "openai"])
def test_a_missing_explainer_folder_is_named(
    missing: str, backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.settings import Settings
    from large_model.loader import load_explainer

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    settings = Settings(llm_backend=backend, openai_base_url="http://127.0.0.1:9")
    with pytest.raises(ModelError) as caught:
        load_explainer(missing, settings=settings)
    message = str(caught.value)
    assert re.match(rf"no such folder: {re.escape(missing.rstrip('/'))}/? \(the explainer", message), message
    assert "Repo id" not in message and "huggingface.co" not in message
