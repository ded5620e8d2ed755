"""Load the explainer that the settings choose: in process (:mod:`inference`) or an OpenAI-compatible
server (:mod:`remote`). Only the chosen backend is imported: the OpenAI one runs without torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from core.errors import ModelError
from large_model.answer import DEFAULT_MAX_NEW_TOKENS
from large_model.bundled import BUNDLED_ALIASES
from large_model.schema import Explanation, LabelSet

if TYPE_CHECKING:
    import torch


class ExplainerBackend(Protocol):
    """What the API needs of an explainer, in process or remote."""

    labels: LabelSet

    def explain(
        self, log_entries: Sequence[str | bytes], lang: str = "en", context: Mapping[str, Any] | None = None
    ) -> Explanation: ...


def load_explainer(
    path: str | Path | None = None,
    backend: str | None = None,
    device: str = "auto",
    dtype: str | torch.dtype | None = "auto",
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    settings: Any | None = None,
) -> ExplainerBackend:
    """The explainer chosen by settings (``LOGTRIAGE_LLM_BACKEND`` inprocess|openai), load it once."""
    if settings is None:
        from core.settings import get_settings

        settings = get_settings()
    chosen = backend or settings.llm_backend
    folder = Path(path) if path is not None else Path(settings.explainer_path)
    if chosen == "openai":
        from large_model.remote import OpenAIExplainer

        return OpenAIExplainer.from_settings(settings, tokenizer_path=folder, max_new_tokens=max_new_tokens)
    if chosen != "inprocess":
        raise ModelError(f"unknown explainer backend {chosen!r} (use inprocess or openai)")
    if not folder.is_dir() and str(path).strip().lower() not in BUNDLED_ALIASES:
        raise ModelError(
            f"no such folder: {folder} (the explainer): run `logtriage train-large` or set LOGTRIAGE_EXPLAINER_PATH"
        )
    from large_model.inference import Explainer

    return Explainer.from_pretrained(
        folder if folder.exists() else str(path), device=device, dtype=dtype, max_new_tokens=max_new_tokens
    )
