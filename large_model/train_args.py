"""The arguments of ``logtriage train-large``: :class:`TrainLargeArgs`, its budgets by name (:data:`TRAIN_PROFILES`)
and the command's flags built from it (:func:`add_arguments`, :func:`args_from_namespace`)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from core.cli_args import add_dataclass_arguments, check_profile, given, with_profile
from large_model.evidence import REFERENCE_FILE
from large_model.quant import BACKENDS

REAL_FILE = "real_anomalies_train.jsonl"  # data_gen/real_anomalies.py writes it beside the synthetic data
SAMPLES = ("balanced", "random")  # how --train-limit samples the training part


# Training budgets by name: the fields a profile sets where the run does not set them. "quick" is make demo's
# minutes-long run (the same code path: a smaller sample, fewer steps, shorter prompts, fewer calibration
# records); its held-out category accuracy is printed by the demo and quoted in the README.
TRAIN_PROFILES: dict[str, dict[str, Any]] = {
    "full": {},
    "quick": {
        "train_limit": 66,
        "max_steps": 200,
        "max_minutes": 3.0,
        "text_fraction": 0.5,
        "max_prompt_tokens": 640,
        "calibrate_examples": 40,
        "fusion_examples": 40,
        "save_every": 0,
    },
}


@dataclass
class TrainLargeArgs:
    """Arguments of ``train-large`` (CLI flags of the same names, dashes for underscores)."""

    data: Path = Path("data/instructions_chat.jsonl")
    labels: Path | None = None  # default: labels.json beside the data, else the built-in label set
    output: Path = Path("artifacts/explainer")
    base: str | None = None  # hub id, folder or "bundled"; default settings.llm_base
    backend: str = "auto"
    device: str = "auto"
    quantize: bool = True
    dtype: str = "auto"
    lora_r: int = 16
    lora_alpha: int | None = None
    lora_dropout: float = 0.05
    lr: float = 4e-3
    label_weight: float = 3.0  # loss weight of the category and severity tokens (1: plain mean)
    lora_layers: int = 4  # LoRA on the top N decoder layers only (0: all): no backward below them
    feature_cache: bool = True  # run the frozen layers below the LoRA once per example, train on their output
    text_fraction: float = 1.0  # share of examples that keep the whole answer; the rest teach the labels only
    batch_size: int = 2
    grad_accum: int = 1
    max_steps: int = 960
    max_minutes: float = 45.0  # the caching pass and the loop stop at this budget (0: none)
    warmup_steps: int = 6
    weight_decay: float = 0.0
    max_seq_len: int = 1344
    max_prompt_tokens: int = 1344
    holdout_fraction: float = 0.2
    limit: int | None = None
    train_limit: int | None = 400  # a seeded sample of the training part, seen for several epochs (0/None: all)
    sample: str = "balanced"  # how --train-limit samples: balanced (even across categories) or random
    save_every: int = 40
    keep_checkpoints: int = 2
    resume: bool = False
    gradient_checkpointing: bool = False
    seed: int = 42
    progress: bool = True
    reference: Path | None = None  # normal runs for the flow comparison; default: normal_reference.jsonl beside --data
    evidence: bool = True  # the comparison with normal runs in every prompt (needs a reference)
    real: Path | None = None  # real-log anomalies (category other); default: real_anomalies_train.jsonl beside --data
    use_real: bool = True  # --no-real: the synthetic records alone
    calibrate_examples: int = 120  # held-out records that calibrate the category threshold (0: none)
    other_quantile: float = 0.02  # share of held-out known-category records allowed below the threshold
    category_classifier: bool = True  # fit the TF-IDF category classifier fused with the LLM's label scores
    fusion_examples: int = 120  # other held-out records that choose the classifier's weight in the fusion
    profile: str = "full"  # recorded in explainer.json; for_profile / --profile quick set the budgets of TRAIN_PROFILES

    def __post_init__(self) -> None:
        check_profile(TRAIN_PROFILES, self.profile)

    @classmethod
    def for_profile(cls, profile: str = "full", **kwargs: Any) -> TrainLargeArgs:
        """The arguments of a run with ``profile``'s budgets (:data:`TRAIN_PROFILES`) where ``kwargs`` set none."""
        return cls(**with_profile(TRAIN_PROFILES, profile, kwargs))


# The help of train-large's flags (one per TrainLargeArgs field; a field without an entry shows its default alone).
TRAIN_HELP: dict[str, str] = {
    "data": "instruction records (JSONL/JSON)",
    "labels": "labels.json (default: beside --data, else the built-in label set)",
    "output": "the adapter folder to write",
    "base": "hub id, model folder or 'bundled' (default settings.llm_base)",
    "device": "auto, cpu, cuda",
    "dtype": "compute dtype: auto, bf16, fp16, fp32",
    "lora_alpha": "default 2 x r",
    "label_weight": "loss weight of the category and severity tokens (1: plain mean)",
    "lora_layers": "LoRA on the top N decoder layers only (0: all)",
    "feature_cache": "run the frozen layers below the LoRA once per example (--no-feature-cache: every layer, every step)",
    "text_fraction": "share of examples trained on the whole answer (the rest: category and severity only)",
    "max_minutes": "stop the training loop after this many minutes (0: no limit); the LR schedule follows",
    "limit": "use only the first N records",
    "train_limit": "train on a seeded sample of N training examples, for several epochs (0: all of them)",
    "sample": "how --train-limit samples: balanced (the categories in turn, as even as the data allows) or random",
    "save_every": "checkpoint every N steps (0: never)",
    "resume": "continue from the last checkpoint in --output",
    "gradient_checkpointing": "recompute activations (less memory)",
    "reference": f"normal runs (sequence records) for the flow comparison in the prompts (default: {REFERENCE_FILE} "
    "beside --data; absent: trained without it)",
    "evidence": "the comparison with normal runs in the prompts (--no-evidence: none)",
    "real": f"real-log anomalies, category 'other' (default: {REAL_FILE} beside --data where it exists; "
    "data_gen/real_anomalies.py writes it)",
    "calibrate_examples": "held-out records that calibrate the category threshold below which the answer is 'other' "
    "(0: none)",
    "other_quantile": "share of held-out known-category records allowed below the threshold",
    "category_classifier": "fit a TF-IDF + logistic regression category classifier on the training records, "
    "fused with the LLM's label scores (--no-category-classifier: the LLM alone)",
    "fusion_examples": "held-out records, apart from the calibration's, that choose the classifier's weight in the "
    "fused category choice",
    "profile": "training budget: full (the default recipe) or quick (make demo's minutes-long run: "
    + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in TRAIN_PROFILES["quick"].items())
    + ", where not given)",
}


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``train-large`` flags, one per :class:`TrainLargeArgs` field (dashes for underscores).

    Two booleans keep their short negative flags: ``--no-quant`` (``quantize``) and ``--no-real``
    (``use_real``; ``--real`` names the file). A flag not given takes the profile's value, else the default.
    """
    add_dataclass_arguments(
        parser,
        TrainLargeArgs,
        TRAIN_HELP,
        skip=("quantize", "use_real"),
        choices={"backend": BACKENDS, "sample": SAMPLES, "profile": TRAIN_PROFILES},
    )
    parser.add_argument("--no-quant", dest="quantize", action="store_false", default=None,
                        help="plain LoRA on an unquantized base")  # fmt: skip
    parser.add_argument("--no-real", dest="use_real", action="store_false", default=None, help="train on --data alone")
    return parser


def args_from_namespace(ns: argparse.Namespace) -> TrainLargeArgs:
    """A :class:`TrainLargeArgs` from parsed flags: the flags given, the profile's budgets where none is."""
    options = given(ns, [f.name for f in fields(TrainLargeArgs)])
    return TrainLargeArgs.for_profile(options.pop("profile", "full"), **options)
