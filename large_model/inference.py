"""The explainer at inference: ``logtriage explain``.

:class:`Explainer` (in process) loads base + adapter and merges the LoRA into a plain
bf16/fp32 model. Where the adapter was trained on an NF4 base, the base is loaded NF4 and
de-quantized *before any forward pass* (a CPU forward repacks the 4-bit weights), so the
merged weights are the very ones the LoRA was trained against, at bf16 speed.

``explain`` chooses the category, then the severity, by the log-likelihood of each known label
as the continuation of a fixed prefix (:mod:`prompts`): the prompt runs once into a KV cache and
all labels of a field are scored in one batched forward from it. Where the folder holds a category
classifier (``category_classifier.safetensors``, :mod:`large_model.category_classifier`), the category is
chosen on the LLM's label log-softmax fused with the classifier's log-probabilities at the weight the
training run calibrated (``fusion_weight``, :func:`answer.choose_category`); the severity stays the LLM's,
scored after the chosen category. The summary, root cause and
suggested response are then generated greedily from the same cache, one JSON string at a time:
after ``{"category": "<chosen>", "severity": "<chosen>", "summary": "`` the model writes the
summary up to its closing quote, the fixed joint ``", "root_cause": "`` is appended, and so on
(each field with its own token budget, :data:`prompts.FIELD_TOKENS`), so the answer is valid JSON
whenever the model closes each string: the model writes the texts, never the structure. The
result is validated as :class:`Explanation`; a field the model left open (out of budget, a stop
token) is kept as far as it got or filled with a fixed sentence, and the result marked not
schema-valid (``ExplainResult.parsed``).

:class:`OpenAIExplainer` does the same against an OpenAI-compatible server (vLLM serving the
base with the adapter); see its docstring.

Evidence: where the explainer folder holds ``flow_profile.json`` (the run trained with the
comparison with normal runs, :mod:`large_model.evidence`), every prompt gets that comparison in
its context, as in training; keys of the caller's ``context`` win on a conflict. A folder whose
``explainer.json`` says ``"evidence": true`` without the file is a :class:`ModelError`.

Bad input: an empty sequence or a non-text line is a :class:`DataError`; bytes are decoded with
invalid UTF-8 replaced; long sequences keep their head and tail lines (:func:`prompts.fit_lines`);
a context too small for even the instructions is a :class:`DataError`.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, overload

import torch

from core.devices import resolve_device
from core.errors import ModelError
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
    read_meta,
)
from large_model.bundled import resolve_base
from large_model.category_classifier import CategoryClassifier
from large_model.encoding import PromptEncoder, end_of_turn_id
from large_model.evidence import FlowProfile
from large_model.grounding import GROUNDED_FIELDS, Grounding, cut_to_sentence, has_loop
from large_model.quant import bitsandbytes_available, get_quantization_config, parse_dtype
from large_model.schema import Explanation, LabelSet

log = logging.getLogger(__name__)

# no n-gram of this many tokens twice in one text field: the shortest n at which no reference answer
# of the generator's data (6000 fields, English and Chinese) repeats one; stops loops of any period
NO_REPEAT_NGRAM = 12
# a field the model left open (a loop ran it to its budget) is written once more with CTRL's
# repetition penalty on the tokens already in it: a positive logit of such a token divided by this,
# a negative one multiplied (greedy loops end; on all fields it lowered ROUGE-L, so only on a retry)
RETRY_REPETITION_PENALTY = 1.3
VALID_CANDIDATES = 32  # tokens looked at, most likely first, for one that keeps the string valid JSON
ANSWER_RESERVE = 48  # tokens kept free after the prompt for the label prefixes


def repeat_banned(tokens: Sequence[int], n: int) -> list[int]:
    """The tokens that would complete an ``n``-gram already in ``tokens`` (what ``no_repeat_ngram_size`` bans)."""
    if n < 1 or len(tokens) < n - 1:
        return []
    if n == 1:
        return sorted(set(tokens))
    suffix = list(tokens[len(tokens) - n + 1 :])
    return sorted({tokens[i + n - 1] for i in range(len(tokens) - n + 1) if list(tokens[i : i + n - 1]) == suffix})


def penalize_repeats(logits: torch.Tensor, tokens: Sequence[int], penalty: float) -> torch.Tensor:
    """CTRL's repetition penalty: the logits (V,) of ``tokens`` divided by ``penalty`` where positive,
    multiplied where negative (a new tensor; ``logits`` as it is when there is nothing to change)."""
    if penalty == 1.0 or not tokens:
        return logits
    out = logits.clone()
    seen = torch.tensor(sorted(set(tokens)), device=logits.device)
    values = out[seen]
    out[seen] = torch.where(values > 0, values / penalty, values * penalty)
    return out


class PrefixScorer:
    """Scores label continuations of a growing prefix from one KV cache."""

    def __init__(self, model: Any, tokenizer: Any, device: str) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.cache: Any = None
        self.cached_ids: list[int] = []

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _advance(self, ids: list[int]) -> None:
        """Make the cache hold exactly ``ids`` (crop what differs, run what is new)."""
        common = 0
        for a, b in zip(self.cached_ids, ids, strict=False):
            if a != b:
                break
            common += 1
        if self.cache is not None and common < len(self.cached_ids):
            self.cache.crop(common)
            self.cached_ids = self.cached_ids[:common]
        new = ids[common:]
        if not new:
            return
        input_ids = torch.tensor([new], device=self.device)  # (1, N)
        positions = torch.arange(common, common + len(new), device=self.device)[None]  # (1, N)
        out = self.model(input_ids=input_ids, past_key_values=self.cache, position_ids=positions, use_cache=True)
        self.cache = out.past_key_values
        self.cached_ids = list(ids)

    @torch.inference_mode()
    def score(self, text: str, candidates: Sequence[str], end: str = prompts.LABEL_END) -> list[float]:
        """Summed log-probability of ``candidate + end`` after ``text``, for every candidate, one batched forward."""
        fulls = [self._ids(text + c + end) for c in candidates]
        base = self._ids(text)
        shared = len(base)
        for ids in fulls:
            k = 0
            for a, b in zip(base, ids, strict=False):
                if a != b:
                    break
                k += 1
            shared = min(shared, k)
        # the cache covers the shared ids but one; each candidate's tail starts with that last shared token
        cut = max(shared - 1, 0)
        if cut:
            self._advance(fulls[0][:cut])
        tails = [ids[cut:] for ids in fulls]
        width = max(len(t) for t in tails)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        batch = torch.full((len(tails), width), pad, dtype=torch.long, device=self.device)  # (C, T)
        valid = torch.zeros((len(tails), width), dtype=torch.bool, device=self.device)  # (C, T)
        for row, tail in enumerate(tails):
            batch[row, : len(tail)] = torch.tensor(tail, device=self.device)
            valid[row, : len(tail)] = True
        cache = None
        if cut:
            cache = copy.deepcopy(self.cache)
            cache.batch_repeat_interleave(len(tails))
        mask = torch.cat([torch.ones((len(tails), cut), dtype=torch.long, device=self.device), valid.long()], dim=1)
        positions = torch.arange(cut, cut + width, device=self.device)[None].expand(len(tails), -1)  # (C, T)
        logits = self.model(
            input_ids=batch, past_key_values=cache, attention_mask=mask, position_ids=positions, use_cache=cut > 0
        ).logits  # (C, T, V)
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (C, T-1, V)
        target = batch[:, 1:]  # (C, T-1)
        picked = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # (C, T-1)
        # every tail token after the first (the last shared one, already context) is a candidate token
        counted = valid[:, 1:]  # (C, T-1)
        return [float(v) for v in (picked * counted).sum(dim=1).tolist()]

    @torch.inference_mode()
    def generate_string(
        self,
        text: str,
        max_new_tokens: int,
        stop_ids: Sequence[int],
        repetition_penalty: float = 1.0,
        grounding: Grounding | None = None,
    ) -> tuple[str, bool, int]:
        """Greedy continuation of ``text`` (which ends inside a JSON string) up to the string's closing quote.

        Returns the raw string content, whether the model closed it (a stop token or the token
        budget ends it open) and the tokens generated. A token that would repeat a
        :data:`NO_REPEAT_NGRAM`-gram of this string is never chosen (a small tuned model otherwise
        falls into loops such as "of the circuit breaker of the circuit breaker ..." until the
        budget runs out), nor one that makes the string invalid JSON (``\\_``, a raw control
        character); ``repetition_penalty`` > 1 lowers the logits of the tokens already in the
        string (see :data:`RETRY_REPETITION_PENALTY`). With ``grounding``, nor one that makes the
        string name something its source does not hold (:class:`grounding.Grounding`); when no
        likely token passes, the string ends there (cut back to its last sentence end), closed.
        The cache keeps the prefix for the next field.
        """
        ids = self._ids(text)
        self._advance(ids[:-1])
        token, position = ids[-1], len(ids) - 1
        new: list[int] = []
        decoded = ""
        stops = set(stop_ids)
        for _ in range(max_new_tokens):
            out = self.model(
                input_ids=torch.tensor([[token]], device=self.device),
                past_key_values=self.cache,
                position_ids=torch.tensor([[position]], device=self.device),
                use_cache=True,
            )
            self.cache = out.past_key_values
            self.cached_ids.append(token)
            position += 1
            logits = out.logits[0, -1]
            banned = repeat_banned(new, NO_REPEAT_NGRAM)
            if repetition_penalty != 1.0:
                logits = penalize_repeats(logits, new, repetition_penalty)
            if banned:
                logits = logits.clone()
                logits[banned] = float("-inf")
            choice = (
                self._choose(logits, new, stops)
                if grounding is None
                else self._choose(logits, new, stops, grounding, grounding.missing(prompts.decode_partial(decoded)))
            )
            if choice is None:  # nothing likely keeps the string grounded: it ends here
                return cut_to_sentence(decoded).rstrip(), True, len(new)
            token, decoded = choice
            if token in stops:
                break
            new.append(token)
            end = prompts.string_end(decoded)
            if end >= 0:
                return decoded[:end], True, len(new)
        return str(self.tokenizer.decode(new, skip_special_tokens=True)), False, len(new)

    @overload
    def _choose(
        self, logits: torch.Tensor, new: list[int], stops: set[int], grounding: None = None, before: None = None
    ) -> tuple[int, str]: ...

    @overload
    def _choose(
        self, logits: torch.Tensor, new: list[int], stops: set[int], grounding: Grounding, before: set[str] | None
    ) -> tuple[int, str] | None: ...

    def _choose(
        self,
        logits: torch.Tensor,
        new: list[int],
        stops: set[int],
        grounding: Grounding | None = None,
        before: set[str] | None = None,
    ) -> tuple[int, str] | None:
        """The most likely token that keeps the string valid JSON (:func:`prompts.valid_string_prefix`),
        free of loops (no 4 words 3 times: :func:`grounding.has_loop`) and, with ``grounding``, naming
        nothing ungrounded beyond ``before`` (what the string so far already names); and the decoded
        string it makes (``new`` plus the token; "" for a stop token).

        Looks at the :data:`VALID_CANDIDATES` most likely tokens in order (almost always the first
        one passes); a stop token is taken as it comes (the string then ends open). When none
        passes: the most likely one without ``grounding``, ``None`` (end the string) with it.
        """
        top = torch.topk(logits, min(VALID_CANDIDATES, logits.shape[-1])).indices.tolist()
        first = ""
        for rank, token in enumerate(top):
            if token in stops:
                return int(token), ""
            text = str(self.tokenizer.decode([*new, token], skip_special_tokens=True))
            if (
                prompts.valid_string_prefix(text)
                and not has_loop(text)
                and (grounding is None or not grounding.adds_ungrounded(prompts.decode_partial(text), before or set()))
            ):
                return int(token), text
            if rank == 0:
                first = text
        if grounding is not None:
            return None
        return int(top[0]), first

    def reset(self) -> None:
        """Forget the cache (a new prompt)."""
        self.cache = None
        self.cached_ids = []


class Explainer:
    """In-process explainer: label scoring + bounded greedy generation on a merged model."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        labels: LabelSet,
        name: str,
        base: str,
        device: str = "cpu",
        max_prompt_tokens: int = 1024,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        relative_time: bool = True,
        short_ids: bool = True,
        flow_profile: FlowProfile | None = None,
        category_threshold: float | None = None,
        grounded: bool = True,
        classifier: CategoryClassifier | None = None,
        fusion_weight: float = 0.0,
    ) -> None:
        self.model = model.eval()
        # below this confidence the category is OTHER (calibrated on held-out data at training)
        self.category_threshold = category_threshold
        # the category classifier fused with the label scores at this weight (calibrated at training)
        if classifier is not None:
            classifier.check_labels(labels.categories, flow_profile)
        self.classifier = classifier
        self.fusion_weight = fusion_weight
        self.grounded = grounded  # summary and root cause copy names and numbers from the source
        self.tokenizer = tokenizer
        self.labels = labels
        self.name = name
        self.base = base
        self.profile = "full"  # the training budget that made it (explainer.json), "quick" for make demo's
        self.device = device
        self.max_new_tokens = max_new_tokens
        context = int(getattr(model.config, "max_position_embeddings", 0) or 0) or 4096
        self.max_prompt_tokens = min(max_prompt_tokens, context - answer_span(max_new_tokens) - ANSWER_RESERVE)
        if self.max_prompt_tokens < 64:
            raise ModelError(f"the model's context ({context} tokens) is too small for the explainer")
        self.encoder = PromptEncoder(
            tokenizer, labels, self.max_prompt_tokens, relative_time, short_ids, profile=flow_profile
        )
        stops = {end_of_turn_id(tokenizer)}
        if tokenizer.eos_token_id is not None:
            stops.add(int(tokenizer.eos_token_id))
        self.stop_ids = sorted(stops)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str = "auto",
        dtype: str | torch.dtype | None = "auto",
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        labels: LabelSet | None = None,
        merge: bool = True,
        flow_profile: FlowProfile | None = None,
    ) -> Explainer:
        """Load an explainer folder (adapter + meta), or a plain base model folder / hub id / ``bundled``.

        ``flow_profile``: the comparison with normal runs to put in the prompts; default: the
        folder's ``flow_profile.json`` where it has one (``evaluate-large --compare-base`` hands
        the tuned model's to the base, so both see the same prompts).
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer

        dev = resolve_device(device)
        torch_dtype = parse_dtype(dtype, dev)
        folder = Path(path)
        is_adapter = (folder / "adapter_config.json").is_file()
        if not is_adapter:
            base_path, base_name = resolve_base(str(path))
            tokenizer = AutoTokenizer.from_pretrained(base_path)
            model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch_dtype).to(dev)  # type: ignore[arg-type]
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            label_set = labels or (
                LabelSet.from_json(folder / "labels.json") if (folder / "labels.json").is_file() else LabelSet()
            )
            if flow_profile is None and folder.is_dir():
                flow_profile = folder_profile(folder)
            return cls(
                model,
                tokenizer,
                label_set,
                base_name,
                base_name,
                dev,
                max_new_tokens=max_new_tokens,
                flow_profile=flow_profile,
            )
        meta = read_meta(folder)
        base_name = str(meta.get("base") or "")
        base_path = str(meta.get("base_path") or "")
        if not base_path or not (Path(base_path).is_dir() or ("/" in base_path and not base_path.startswith("/"))):
            base_path, resolved_name = resolve_base(base_name or None)
            base_name = base_name or resolved_name
        tokenizer = AutoTokenizer.from_pretrained(folder)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        label_set = labels or LabelSet.from_json(folder / "labels.json")
        if flow_profile is None:
            flow_profile = folder_profile(folder, meta)
        classifier, fusion_weight = folder_classifier(folder, meta)
        model = _load_base_for_merge(base_path, meta.get("quantization") == "nf4", torch_dtype, dev)
        from peft import PeftModel

        try:
            peft_model = PeftModel.from_pretrained(model, str(folder))
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelError(f"cannot load the adapter in {folder}: {exc}") from None
        merged = peft_model.merge_and_unload() if merge else peft_model
        explainer = cls(
            merged,
            tokenizer,
            label_set,
            str(folder),
            base_name or base_path,
            dev,
            max_prompt_tokens=int(meta.get("max_prompt_tokens", 1024)),
            max_new_tokens=max_new_tokens,
            relative_time=bool(meta.get("relative_time", False)),
            short_ids=bool(meta.get("short_ids", False)),
            flow_profile=flow_profile,
            category_threshold=meta.get("category_threshold"),
            classifier=classifier,
            fusion_weight=fusion_weight,
        )
        explainer.profile = str(meta.get("profile") or "full")
        return explainer

    @property
    def flow_profile(self) -> FlowProfile | None:
        """The comparison with normal runs the prompts carry (None: no evidence)."""
        return self.encoder.profile

    def explain(
        self, log_entries: Sequence[str | bytes], lang: str = "en", context: Mapping[str, Any] | None = None
    ) -> Explanation:
        """Explain one anomalous sequence (category and severity scored, texts generated)."""
        return self.explain_detailed(log_entries, lang, context).explanation

    def score_categories(
        self, log_entries: Sequence[str | bytes], lang: str = "en", context: Mapping[str, Any] | None = None
    ) -> tuple[list[float], list[float] | None]:
        """The LLM's label scores of :attr:`labels`' categories and the category classifier's log-probabilities
        (None without one): what :meth:`explain_detailed` chooses the category from, without the rest."""
        messages, _ = self.encoder.messages(log_entries, lang, context)
        scorer = PrefixScorer(self.model, self.tokenizer, self.device)
        scores = scorer.score(self.encoder.render(messages) + prompts.category_prefix(), self.labels.categories)
        return scores, self.classifier_scores(log_entries, lang)

    def classifier_scores(self, log_entries: Sequence[str | bytes], lang: str = "en") -> list[float] | None:
        """The category classifier's log-probabilities of :attr:`labels`' categories (None without one)."""
        if self.classifier is None:
            return None
        return self.classifier.category_log_probs(self.labels.categories, log_entries, lang, self.flow_profile)

    def explain_detailed(
        self,
        log_entries: Sequence[str | bytes],
        lang: str = "en",
        context: Mapping[str, Any] | None = None,
        generate: bool = True,
    ) -> ExplainResult:
        """:meth:`explain` with the label scores, the raw generation and the time it took."""
        started = time.perf_counter()
        messages, omitted = self.encoder.messages(log_entries, lang, context)
        prompt = self.encoder.render(messages)
        source = grounding_source(log_entries, messages)
        scorer = PrefixScorer(self.model, self.tokenizer, self.device)
        cats = self.labels.categories
        cat_scores = scorer.score(prompt + prompts.category_prefix(), cats)
        clf_scores = self.classifier_scores(log_entries, lang)
        category, confidence = choose_category(
            cats, cat_scores, self.category_threshold, clf_scores, self.fusion_weight
        )
        sevs = self.labels.severities
        sev_scores = scorer.score(prompt + prompts.severity_prefix(category), sevs)
        severity = sevs[max(range(len(sevs)), key=sev_scores.__getitem__)]
        raws: list[str] = []
        closed: list[bool] = []
        if generate:
            check = Grounding(source) if self.grounded else None

            def grounding_for(key: str) -> Grounding | None:
                return check if key in GROUNDED_FIELDS else None

            raws, closed = generate_fields(
                lambda answer, budget, key: scorer.generate_string(
                    prompt + answer, budget, self.stop_ids, grounding=grounding_for(key)
                ),
                category,
                severity,
                self.max_new_tokens,
                retry=lambda answer, budget, key: scorer.generate_string(
                    prompt + answer, budget, self.stop_ids, RETRY_REPETITION_PENALTY, grounding_for(key)
                ),
            )
        explanation, parsed = build_explanation(category, severity, raws, closed, lang, self.name, self.base)
        explanation = explanation.model_copy(update={"confidence": confidence})
        extra: dict[str, Any] = {"source": source}
        if clf_scores is not None:
            extra["classifier_scores"] = dict(zip(cats, clf_scores, strict=True))
        return ExplainResult(
            explanation=explanation,
            category_scores=dict(zip(cats, cat_scores, strict=True)),
            severity_scores=dict(zip(sevs, sev_scores, strict=True)),
            generated=prompts.assemble_answer(category, severity, raws, closed) if generate else "",
            parsed=parsed and generate,
            seconds=time.perf_counter() - started,
            omitted_lines=omitted,
            extra=extra,
        )


def _load_base_for_merge(base_path: str, nf4: bool, dtype: torch.dtype, device: str) -> Any:
    """The base as trained against: NF4 then de-quantized (no forward before!) where it was tuned NF4."""
    from transformers import AutoModelForCausalLM

    try:
        if nf4 and bitsandbytes_available():
            model = AutoModelForCausalLM.from_pretrained(
                base_path,
                quantization_config=get_quantization_config(dtype),
                dtype=dtype,
                device_map={"": device if device != "cuda" else 0},
            )
            model = model.dequantize()
            model.is_loaded_in_4bit = False
            return model.to(dtype)
        return AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype).to(device)  # type: ignore[arg-type]
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load base model {base_path}: {exc}") from None
