"""Pure builders for QLoRA (NF4 + LoRA) and the loaders of a base model for training.

Backends: ``unsloth`` (FastLanguageModel; GPU only, imported lazily), ``peft``
(transformers + peft + bitsandbytes; CUDA and CPU alike; plain LoRA on an unquantized base
where bitsandbytes is absent or ``quantize=False``) and ``auto`` (unsloth where a GPU is present
and it imports, else peft).
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from core.devices import resolve_device
from core.errors import ModelError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "unsloth", "peft")
# the linear layers of Llama/Qwen2/Mistral-style decoders (unsloth wants names, peft takes "all-linear")
LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def default_compute_dtype(device: str) -> torch.dtype:
    """bf16 where the hardware computes in it natively (recent GPUs, AMX/AVX512-BF16 CPUs), else float32."""
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if _cpu_has_bf16() else torch.float32


def parse_dtype(name: str | torch.dtype | None, device: str) -> torch.dtype:
    """A torch dtype from ``auto|bf16|fp16|fp32`` (or a dtype)."""
    if isinstance(name, torch.dtype):
        return name
    if name in (None, "auto"):
        return default_compute_dtype(device)
    table = {
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
        "fp32": torch.float32,
        "float32": torch.float32,
    }
    if name not in table:
        raise ModelError(f"unknown dtype {name!r} (use auto, bf16, fp16 or fp32)")
    return table[name]


def bitsandbytes_available() -> bool:
    """Whether bitsandbytes can be imported (it runs NF4 on CUDA and, from 0.45/0.50, on the CPU)."""
    if importlib.util.find_spec("bitsandbytes") is None:
        return False
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:  # a broken native library install
        log.warning("bitsandbytes is installed but does not import (%s): plain LoRA instead", exc)
        return False
    return True


def get_quantization_config(compute_dtype: torch.dtype = torch.bfloat16, double_quant: bool = True) -> Any:
    """The QLoRA quantization: NF4 4-bit weights, double quantization, compute in ``compute_dtype``."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_quant_storage=torch.uint8,
    )


def get_lora_config(
    r: int = 16,
    alpha: int | None = None,
    dropout: float = 0.05,
    target_modules: list[str] | str = "all-linear",
    layers: list[int] | None = None,
) -> Any:
    """LoRA of rank ``r`` (alpha defaults to 2r) on every linear layer but the output head.

    ``layers``: the decoder layers that get adapters (all where None).
    """
    from peft import LoraConfig, TaskType

    return LoraConfig(
        r=r,
        lora_alpha=alpha if alpha is not None else 2 * r,
        lora_dropout=dropout,
        target_modules=target_modules,
        layers_to_transform=layers,
        layers_pattern="layers" if layers is not None else None,
        bias="none",
        task_type=TaskType.CAUSAL_LM,
    )


def top_layers(num_layers: int, lora_layers: int) -> list[int] | None:
    """The indices of the top ``lora_layers`` decoder layers (None: all of them)."""
    if lora_layers <= 0 or lora_layers >= num_layers:
        return None
    return list(range(num_layers - lora_layers, num_layers))


def linear_module_names(model: Any) -> list[str]:
    """The short names of every linear layer but the output head (what adapter_config lists)."""
    names = set()
    for name, module in model.named_modules():
        kind = type(module).__name__
        if kind in ("Linear", "Linear4bit", "Linear8bitLt") and not name.endswith("lm_head"):
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def unsloth_available() -> bool:
    """Whether unsloth could run here: a CUDA GPU and the package (not imported here)."""
    return torch.cuda.is_available() and importlib.util.find_spec("unsloth") is not None


def choose_backend(backend: str, device: str) -> str:
    """The backend ``auto`` resolves to on this device."""
    if backend not in BACKENDS:
        raise ModelError(f"unknown backend {backend!r} (use one of {', '.join(BACKENDS)})")
    if backend == "unsloth":
        if not device.startswith("cuda") or not unsloth_available():
            raise ModelError("the unsloth backend needs a CUDA GPU and the unsloth package (pip install unsloth)")
        return "unsloth"
    if backend == "auto" and device.startswith("cuda") and unsloth_available():
        return "unsloth"
    return "peft"


@dataclass
class TrainingModel:
    """A model ready to train, with what it is made of."""

    model: Any
    tokenizer: Any
    backend: str
    quantization: str  # "nf4" or "none"
    compute_dtype: torch.dtype
    device: str
    info: dict[str, Any] = field(default_factory=dict)


def load_tokenizer(path: str) -> Any:
    """The base's tokenizer, with a pad token (the eos one where it has none)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as exc:
        raise ModelError(f"cannot load a tokenizer from {path}: {exc}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        raise ModelError(f"the tokenizer of {path} has no chat template: use an instruct/chat base model")
    return tokenizer


def load_for_training(
    base_path: str,
    backend: str = "auto",
    device: str = "auto",
    quantize: bool = True,
    compute_dtype: str | torch.dtype | None = "auto",
    lora_r: int = 16,
    lora_alpha: int | None = None,
    lora_dropout: float = 0.05,
    gradient_checkpointing: bool = False,
    max_seq_len: int = 1024,
    seed: int = 42,
    lora_layers: int = 0,
) -> TrainingModel:
    """A freshly loaded base with LoRA attached: NF4 (QLoRA) where bitsandbytes works, else plain LoRA.

    ``lora_layers`` > 0 puts the adapters on the top that many decoder layers only: nothing
    below them needs a gradient, so autograd records nothing there and the backward pass
    stops at the first adapted layer (the inputs are never made to require grad).

    Load a fresh model for every run: on CPU a 4-bit model that already ran an inference
    forward fails to train layers with a bias (DESIGN.md).
    """
    dev = resolve_device(device)
    dtype = parse_dtype(compute_dtype, dev)
    chosen = choose_backend(backend, dev)
    torch.manual_seed(seed)
    if chosen == "unsloth":
        return _load_unsloth(
            base_path, quantize, dtype, lora_r, lora_alpha, lora_dropout, max_seq_len, seed, lora_layers
        )
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(base_path)
    use_bnb = quantize and bitsandbytes_available()
    if quantize and not use_bnb:
        log.warning("bitsandbytes is not available: training plain LoRA on an unquantized base")
    kwargs: dict[str, Any] = {"dtype": dtype if use_bnb else torch.float32, "low_cpu_mem_usage": True}
    if use_bnb:
        kwargs["quantization_config"] = get_quantization_config(dtype)
        kwargs["device_map"] = {"": dev if dev != "cuda" else 0}
    try:
        model = AutoModelForCausalLM.from_pretrained(base_path, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load base model {base_path}: {exc}") from None
    if not use_bnb:
        model = model.to(dev)  # type: ignore[arg-type]
    model.config.use_cache = False
    layers = top_layers(int(model.config.num_hidden_layers), lora_layers)
    if use_bnb:
        # prepare_model_for_kbit_training makes the inputs require grad when checkpointing, which
        # would run the backward through every layer: checkpoint by hand instead
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    for param in model.parameters():
        param.requires_grad_(False)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if layers is None:
            model.enable_input_require_grads()
    targets = linear_module_names(model) or "all-linear"
    model = get_peft_model(model, get_lora_config(lora_r, lora_alpha, lora_dropout, targets, layers))
    trainable, total = model.get_nb_trainable_parameters()
    info = {
        "trainable_params": int(trainable),
        "total_params": int(total),
        "lora_layers": len(layers) if layers else int(model.config.num_hidden_layers),
    }
    log.info(
        "backend peft, %s, compute %s on %s, LoRA on %s: %d trainable of %d parameters",
        "QLoRA NF4" if use_bnb else "plain LoRA",
        str(dtype).replace("torch.", ""),
        dev,
        f"the top {len(layers)} layers" if layers else "every layer",
        trainable,
        total,
    )
    return TrainingModel(model, tokenizer, "peft", "nf4" if use_bnb else "none", dtype, dev, info)


def _load_unsloth(
    base_path: str,
    quantize: bool,
    dtype: torch.dtype,
    lora_r: int,
    lora_alpha: int | None,
    lora_dropout: float,
    max_seq_len: int,
    seed: int,
    lora_layers: int = 0,
) -> TrainingModel:
    try:
        from unsloth import FastLanguageModel  # heavy, GPU-only: imported here alone
    except Exception as exc:
        raise ModelError(f"unsloth does not import here: {exc}") from None
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=base_path, max_seq_length=max_seq_len, dtype=dtype, load_in_4bit=quantize
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    layers = top_layers(int(model.config.num_hidden_layers), lora_layers)
    model = FastLanguageModel.get_peft_model(
        model,
        layers_to_transform=layers,
        layers_pattern="layers" if layers is not None else None,
        r=lora_r,
        lora_alpha=lora_alpha if lora_alpha is not None else 2 * lora_r,
        lora_dropout=lora_dropout,
        target_modules=list(LINEAR_MODULES),
        bias="none",
        use_gradient_checkpointing="unsloth",
        random_state=seed,
    )
    trainable, total = model.get_nb_trainable_parameters()
    info = {
        "trainable_params": int(trainable),
        "total_params": int(total),
        "lora_layers": len(layers) if layers else int(model.config.num_hidden_layers),
    }
    return TrainingModel(model, tokenizer, "unsloth", "nf4" if quantize else "none", dtype, "cuda", info)
