"""The explainer against an OpenAI-compatible server (vLLM serving the base plus the LoRA adapter).

Serve it, for instance, with::

    vllm serve Qwen/Qwen2.5-0.5B-Instruct --enable-lora --lora-modules explainer=artifacts/explainer

and set ``LOGTRIAGE_LLM_BACKEND=openai``, ``LOGTRIAGE_OPENAI_BASE_URL=http://host:8000``,
``LOGTRIAGE_OPENAI_MODEL=explainer``. The prompt is rendered here with the adapter folder's
tokenizer and chat template (the server sees exactly the training text), with the folder's
flow comparison (``flow_profile.json``, :mod:`large_model.evidence`) in its context where the
run trained with it, as the in-process explainer does.

``mode="completions"`` (default, exact): label scoring sends all labels of a field in ONE
``/v1/completions`` request (a list of prompts ``prompt + prefix + label + '",'``) with
``echo=true, logprobs=1, max_tokens=1``; each label's score is the sum of the echoed prompt-token
log-probabilities of the tokens that overlap the label text (found through ``text_offset``),
the same likelihood the in-process explainer computes. The texts are then generated greedily,
one JSON string at a time as in process (:func:`answer.generate_fields`): each request
continues the answer so far (``..., "summary": "``), stops at the string's closing ``"`` (vLLM's
``stop`` with ``include_stop_str_in_output``) within the field's token budget, and the fixed joint
to the next field is written here, so the answer is valid JSON whenever the model closes each
string. One difference: the in-process explainer never lets a field repeat a
12-token n-gram (:data:`inference.NO_REPEAT_NGRAM`, against greedy loops) nor write an invalid
JSON escape (``\\_``), and writes a field left open once more with a repetition penalty on that
field's own tokens; the OpenAI API has none of these (vLLM's ``repetition_penalty`` also counts
the prompt's tokens, which the answers copy ids from), so a server's field can loop until its
budget or hold such an escape, and count as not schema-valid.

Where the explainer folder holds a category classifier (:mod:`large_model.category_classifier`), the
category is chosen, as in process, on the label scores fused with its log-probabilities at the folder's
``fusion_weight``; that needs the scores, so completions mode only.

``mode="chat"`` (servers without prompt log-probabilities): constrained prompting through
``/v1/chat/completions``: the category and then the severity are asked for as a continuation of
the assistant's JSON prefix with vLLM's ``guided_choice`` (the server may only answer a known
label) and ``continue_final_message``; an answer that is not a known label is a ModelError. The
texts are generated field by field in the same way, as continuations of the assistant message.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from core.errors import BackendUnavailable, ModelError
from large_model import prompts
from large_model.answer import (
    DEFAULT_MAX_NEW_TOKENS,
    ExplainResult,
    answer_span,
    build_explanation,
    choose_category,
    folder_classifier,
    folder_profile,
    generate_fields,
    grounding_source,
)
from large_model.bundled import folder_or_hub_id
from large_model.encoding import PromptEncoder
from large_model.evidence import FlowProfile
from large_model.schema import Explanation, LabelSet

log = logging.getLogger(__name__)

MODES = ("completions", "chat")
TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})  # the server may answer the same request later
STOP_STRINGS = ("<|im_end|>", "<|endoftext|>")  # end of turn / of text in Qwen-style templates


class OpenAIExplainer:
    """Explains through a /v1/completions (or /v1/chat/completions) server; same prompts and scoring.

    Safe to call from several threads at once (the server batches concurrent requests): only the
    tokenizer is shared, behind a lock. A server that cannot answer now (refused, timed out, 408,
    429, 5xx) raises :class:`BackendUnavailable`; any other failure is a plain :class:`ModelError`.
    """

    max_concurrency = 64  # explanations one process may have in flight against the server

    def __init__(
        self,
        base_url: str,
        model: str,
        tokenizer_path: str | Path,
        labels: LabelSet | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        max_prompt_tokens: int = 1024,
        mode: str = "completions",
        base: str | None = None,
        client: httpx.Client | None = None,
        flow_profile: FlowProfile | None = None,
    ) -> None:
        from transformers import AutoTokenizer

        if mode not in MODES:
            raise ModelError(f"unknown OpenAI mode {mode!r} (use one of {', '.join(MODES)})")
        source = folder_or_hub_id(tokenizer_path, "the explainer, whose tokenizer and labels the prompts use")
        folder = Path(source)
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        if labels is None:
            labels = LabelSet.from_json(folder / "labels.json") if (folder / "labels.json").is_file() else LabelSet()
        self.labels = labels
        self.model_id = model
        self.name = f"openai:{model}"
        self.base = base or model
        self.mode = mode
        self.max_new_tokens = max_new_tokens
        if flow_profile is None:
            flow_profile = folder_profile(folder)
        self.encoder = PromptEncoder(self.tokenizer, labels, max_prompt_tokens, profile=flow_profile)
        # the folder's category classifier, fused with the server's label scores (completions mode)
        self.classifier, self.fusion_weight = folder_classifier(folder) if folder.is_dir() else (None, 0.0)
        if self.classifier is not None:
            self.classifier.check_labels(labels.categories, flow_profile)
        self._tokenizer_lock = threading.Lock()  # a fast tokenizer is not safe to call from two threads at once
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = client or httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout, headers=headers)
        if client is not None and headers:
            self.client.headers.update(headers)

    @classmethod
    def from_settings(cls, settings: Any | None = None, **overrides: Any) -> OpenAIExplainer:
        """Built from ``LOGTRIAGE_OPENAI_BASE_URL``, ``..._OPENAI_MODEL`` and the explainer folder's tokenizer."""
        if settings is None:
            from core.settings import get_settings

            settings = get_settings()
        if not settings.openai_base_url:
            raise ModelError("LOGTRIAGE_OPENAI_BASE_URL is not set: no OpenAI-compatible server to call")
        return cls(
            base_url=settings.openai_base_url,
            model=settings.openai_model or "explainer",
            tokenizer_path=overrides.pop("tokenizer_path", settings.explainer_path),
            **overrides,
        )

    def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self.client.post(path, json=payload)
        except httpx.TransportError as exc:  # refused, reset, timed out: the server is down or overloaded
            raise BackendUnavailable(
                f"the OpenAI-compatible server did not answer {path}: {type(exc).__name__}: {exc}"
            ) from None
        except httpx.HTTPError as exc:
            raise ModelError(f"the OpenAI-compatible server did not answer {path}: {exc}") from None
        if response.status_code != 200:
            error = BackendUnavailable if response.status_code in TRANSIENT_STATUS else ModelError
            raise error(f"{path} answered {response.status_code}: {response.text[:300]}")
        try:
            return dict(response.json())
        except ValueError:
            raise ModelError(f"{path} answered something that is not JSON") from None

    def _score(self, text: str, candidates: Sequence[str]) -> list[float]:
        fulls = [text + c + prompts.LABEL_END for c in candidates]
        data = self._post(
            "/v1/completions",
            {"model": self.model_id, "prompt": fulls, "max_tokens": 1, "temperature": 0, "echo": True, "logprobs": 1},
        )
        choices = sorted(data.get("choices", []), key=lambda c: c.get("index", 0))
        if len(choices) != len(fulls):
            raise ModelError(f"/v1/completions returned {len(choices)} choices for {len(fulls)} prompts")
        scores = []
        for full, choice in zip(fulls, choices, strict=True):
            lp = choice.get("logprobs") or {}
            offsets, values = lp.get("text_offset"), lp.get("token_logprobs")
            if not offsets or not values:
                raise ModelError("the server returned no prompt log-probabilities (echo): use mode='chat'")
            total = 0.0
            for j, (start, value) in enumerate(zip(offsets, values, strict=True)):
                end = offsets[j + 1] if j + 1 < len(offsets) else len(full) + 1
                if end > len(text) and start < len(full) and value is not None:
                    total += float(value)
            scores.append(total)
        return scores

    def _chat_label(self, messages: list[dict[str, str]], prefix: str, candidates: Sequence[str]) -> str:
        data = self._post(
            "/v1/chat/completions",
            {
                "model": self.model_id,
                "messages": [*messages, {"role": "assistant", "content": prefix}],
                "max_tokens": 16,
                "temperature": 0,
                "guided_choice": list(candidates),
                "continue_final_message": True,
                "add_generation_prompt": False,
            },
        )
        answer = str(data["choices"][0]["message"]["content"] or "").strip().strip('",')
        if answer.startswith(prefix):
            answer = answer[len(prefix) :].strip().strip('",')
        if answer not in candidates:
            raise ModelError(f"the server answered {answer!r}, not one of the known labels")
        return answer

    def _generate_string(
        self, messages: list[dict[str, str]], prompt: str, answer: str, budget: int
    ) -> tuple[str, bool, int]:
        """Greedy text of the JSON string the answer so far opens, up to its closing quote (as in process).

        The server stops at ``"`` (kept in the output: vLLM's ``include_stop_str_in_output``); an
        escaped ``\\"`` is not the end, so the request goes on from there while budget is left.
        ``prompt``: ``messages`` rendered (what completions mode continues). Returns the raw content,
        whether the model closed it, and the tokens it took.
        """
        raw, used = "", 0
        while used < budget:
            payload: dict[str, Any] = {
                "model": self.model_id,
                "max_tokens": budget - used,
                "temperature": 0,
                "stop": ['"', *STOP_STRINGS],
                "include_stop_str_in_output": True,
            }
            if self.mode == "completions":
                path = "/v1/completions"
                payload["prompt"] = prompt + answer + raw
            else:
                path = "/v1/chat/completions"
                payload["messages"] = [*messages, {"role": "assistant", "content": answer + raw}]
                payload["continue_final_message"] = True
                payload["add_generation_prompt"] = False
            data = self._post(path, payload)
            choice = (data.get("choices") or [{}])[0]
            if self.mode == "completions":
                text = str(choice.get("text") or "")
            else:
                text = str((choice.get("message") or {}).get("content") or "")
            if self.mode == "chat" and text.startswith(answer + raw):
                text = text[len(answer + raw) :]
            usage = data.get("usage") or {}
            took = int(usage.get("completion_tokens") or self._count_tokens(text))
            used += max(took, 1)
            for stop in STOP_STRINGS:  # the turn ended inside the string: not closed
                if stop in text:
                    return raw + text[: text.index(stop)], False, used
            end = prompts.string_end(raw + text)
            if end >= 0:
                return (raw + text)[:end], True, used
            raw += text
            if choice.get("finish_reason") != "stop" or not text.endswith('"'):
                break  # out of budget (or a server that ended for another reason)
        return raw, False, used

    def _count_tokens(self, text: str) -> int:
        with self._tokenizer_lock:
            return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def explain(
        self, log_entries: Sequence[str | bytes], lang: str = "en", context: Mapping[str, Any] | None = None
    ) -> Explanation:
        """Explain one sequence through the server."""
        return self.explain_detailed(log_entries, lang, context).explanation

    def explain_detailed(
        self, log_entries: Sequence[str | bytes], lang: str = "en", context: Mapping[str, Any] | None = None
    ) -> ExplainResult:
        """:meth:`explain` with scores (completions mode), raw text and time."""
        started = time.perf_counter()
        with self._tokenizer_lock:
            messages, omitted = self.encoder.messages(
                log_entries, lang, context, reserve=answer_span(self.max_new_tokens)
            )
            prompt = self.encoder.render(messages) if self.mode == "completions" else ""  # chat: the server renders
        cats, sevs = self.labels.categories, self.labels.severities
        cat_scores: list[float] = []
        sev_scores: list[float] = []
        confidence: float | None = None  # chat mode: the server gives no label scores
        extra: dict[str, Any] = {"source": grounding_source(log_entries, messages)}
        if self.mode == "completions":
            cat_scores = self._score(prompt + prompts.category_prefix(), cats)
            clf_scores = None
            if self.classifier is not None:
                clf_scores = self.classifier.category_log_probs(cats, log_entries, lang, self.encoder.profile)
                extra["classifier_scores"] = dict(zip(cats, clf_scores, strict=True))
            category, confidence = choose_category(cats, cat_scores, None, clf_scores, self.fusion_weight)
            sev_scores = self._score(prompt + prompts.severity_prefix(category), sevs)
            severity = sevs[max(range(len(sevs)), key=sev_scores.__getitem__)]
        else:
            category = self._chat_label(messages, prompts.category_prefix(), cats)
            severity = self._chat_label(messages, prompts.severity_prefix(category), sevs)
        raws, closed = generate_fields(
            lambda answer, budget, _key: self._generate_string(messages, prompt, answer, budget),
            category,
            severity,
            self.max_new_tokens,
        )
        explanation, parsed = build_explanation(category, severity, raws, closed, lang, self.name, self.base)
        explanation = explanation.model_copy(update={"confidence": confidence})
        seconds = time.perf_counter() - started
        log.debug("explained through %s (%s): %s, %.2f s", self.client.base_url, self.model_id, category, seconds)
        return ExplainResult(
            explanation=explanation,
            category_scores=dict(zip(cats, cat_scores, strict=False)),
            severity_scores=dict(zip(sevs, sev_scores, strict=False)),
            generated=prompts.assemble_answer(category, severity, raws, closed),
            parsed=parsed,
            seconds=seconds,
            omitted_lines=omitted,
            extra=extra,
        )

    def close(self) -> None:
        """Close the HTTP client."""
        self.client.close()
