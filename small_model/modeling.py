"""MoE-BERT over log lines: a BERT line encoder, a transformer with a mixture-of-experts layer over the
line vectors, and three heads.

    lines -> BERT line encoder (frozen, mean pooled; once per distinct line)  -> (N, D) line vectors
    (B, L) lines of a sequence -> proj(vector) + class embedding + position     -> (B, L, H)
          -> transformer blocks (bidirectional, or causal for forward line modeling)
          -> MoE layer: x + sum_e w_e * expert_e(x), LayerNorm   (Top-P or dense routing)  -> (B, L, H)
          -> line head: the class of a masked line (masked line modeling)
          -> next head: the class of the next line, or the end (forward line modeling)
          -> pooling (attention) -> (B, H) -> anomaly head (H -> 64 -> 1) -> sigmoid

A line's class is its normalized text in the vocabulary of the training lines (``other`` for the rest);
its vector carries what the text says, so a line never seen in training still has a meaning. Routing
is per line. In ``top_p`` mode each line keeps the smallest set of experts whose sorted router
probabilities reach ``top_p``, renormalised; in ``dense`` mode (training stage 1) every expert runs on
every line with equal weights and nothing is gated.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import CONFIG_MAPPING, AutoModel, BertConfig, PreTrainedModel, PreTrainedTokenizerBase

from core.errors import ModelError
from small_model.config import PLACEHOLDER_TOKENS, SCRATCH_ENCODER, DetectorConfig, resolve_encoder

logger = logging.getLogger(__name__)

MoEMode = Literal["dense", "top_p"]
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


# ----------------------------------------------------------------------------- routing


def top_p_routing(router_probs: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep, per token, the fewest experts whose sorted probabilities sum to >= top_p.

    Returns ``(weights, mask)``, both (N, E): the kept probabilities renormalised to sum to 1,
    and the boolean mask of kept experts. The most probable expert is always kept.
    """
    sorted_probs, order = router_probs.sort(dim=-1, descending=True)  # (N, E)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # (N, E) probability mass of better experts
    keep_sorted = mass_before < top_p - 1e-6  # (N, E) an expert is needed while the mass is short of p
    mask = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)  # (N, E) back to expert order
    weights = router_probs * mask
    weights = weights / weights.sum(dim=-1, keepdim=True).clamp_min(1e-9)  # (N, E)
    return weights, mask


def load_balancing_loss(
    router_probs: torch.Tensor, expert_mask: torch.Tensor, token_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Switch-Transformer auxiliary loss ``E * sum_e f_e * P_e``; 1.0 for perfectly uniform routing.

    ``router_probs`` (N, E) softmax outputs, ``expert_mask`` (N, E) the experts each token went to,
    ``token_mask`` (N,) optional, which tokens count. ``f_e`` is the share of dispatches that went
    to expert e and ``P_e`` the mean router probability of expert e.
    """
    num_experts = router_probs.shape[-1]
    probs = router_probs.float()
    dispatch = expert_mask.float()
    if token_mask is not None:
        keep = token_mask.reshape(-1).bool()
        probs, dispatch = probs[keep], dispatch[keep]
    if probs.numel() == 0:
        return router_probs.new_zeros(())
    f = dispatch.sum(dim=0) / dispatch.sum().clamp_min(1.0)  # (E,) share of dispatches per expert
    p = probs.mean(dim=0)  # (E,) mean router probability per expert
    return num_experts * torch.sum(f * p)


# ----------------------------------------------------------------------------- modules


class Expert(nn.Module):
    """One feed-forward expert: H -> expert_hidden -> H."""

    def __init__(self, hidden: int, inner: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden, inner)
        self.fc2 = nn.Linear(inner, hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(F.gelu(self.fc1(x))))  # (N, H)


@dataclass
class MoEOutput:
    """What the MoE layer returns besides its hidden states."""

    hidden: torch.Tensor  # (B, T, H)
    router_probs: torch.Tensor  # (N, E) over the N real (non-padding) tokens
    expert_mask: torch.Tensor  # (N, E) bool, the experts each token used
    aux_loss: torch.Tensor  # () load-balancing loss (top_p mode), 0 in dense mode


class MoELayer(nn.Module):
    """Experts over the encoder's token outputs, with a residual connection and a LayerNorm."""

    def __init__(self, config: DetectorConfig, hidden: int) -> None:
        super().__init__()
        self.num_experts = config.num_experts
        self.top_p = config.top_p
        self.router = nn.Linear(hidden, config.num_experts, bias=False)
        self.experts = nn.ModuleList(
            Expert(hidden, config.expert_hidden, config.moe_dropout) for _ in range(config.num_experts)
        )
        self.norm = nn.LayerNorm(hidden, eps=1e-12)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor, mode: MoEMode) -> MoEOutput:
        B, T, H = hidden.shape
        real = attention_mask.reshape(-1).bool()  # (B*T,)
        x = hidden.reshape(B * T, H)[real]  # (N, H) only real tokens are routed
        router_logits = self.router(x)  # (N, E)
        router_probs = F.softmax(router_logits, dim=-1, dtype=torch.float32)  # (N, E) softmax in float32
        if mode == "dense":
            mask = torch.ones_like(router_probs, dtype=torch.bool)  # (N, E)
            weights = torch.full_like(router_probs, 1.0 / self.num_experts)  # (N, E) every expert, equal shares
            out = torch.zeros_like(x)
            for e, expert in enumerate(self.experts):
                out = out + (weights[:, e : e + 1] * expert(x)).to(out.dtype)  # (N, H)
            aux = router_probs.new_zeros(())
        else:
            weights, mask = top_p_routing(router_probs, self.top_p)  # (N, E), (N, E)
            out = torch.zeros_like(x)
            for e, expert in enumerate(self.experts):
                idx = mask[:, e].nonzero(as_tuple=True)[0]  # tokens routed to expert e
                if idx.numel() == 0:
                    continue
                contribution = weights[idx, e : e + 1] * expert(x[idx])  # (n_e, H)
                out = out.index_add(0, idx, contribution.to(out.dtype))
            aux = load_balancing_loss(router_probs, mask)
        mixed = self.norm(x + out)  # (N, H)
        full = hidden.reshape(B * T, H).clone()
        full[real] = mixed.to(full.dtype)
        return MoEOutput(full.reshape(B, T, H), router_probs, mask, aux)


class LineHead(nn.Module):
    """Masked line modeling: the class of a masked log line (a line vocabulary + ``other``) from the
    mean of its token states, so the model learns which step comes where in a flow."""

    def __init__(self, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden, eps=1e-12)
        self.decoder = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(F.gelu(self.dense(x))))  # (M, C)


class SelfAttention(nn.Module):
    """Multi-head self-attention over line positions (``mask`` (B, 1, L, L): True where a line may look)."""

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, L, H = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, H // self.heads).permute(2, 0, 3, 1, 4)  # (B, h, L, d) each
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)  # (B, h, L, d)
        return self.out(y.transpose(1, 2).reshape(B, L, H))  # (B, L, H)


class Block(nn.Module):
    """A pre-LayerNorm transformer block: attention, then a feed-forward layer, each with a residual."""

    def __init__(self, hidden: int, heads: int, inner: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden)
        self.attn = SelfAttention(hidden, heads, dropout)
        self.norm2 = nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(nn.Linear(hidden, inner), nn.GELU(), nn.Linear(inner, hidden))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.norm1(x), mask))  # (B, L, H)
        return x + self.dropout(self.ffn(self.norm2(x)))  # (B, L, H)


def line_attention_mask(real: torch.Tensor, causal: bool) -> torch.Tensor:
    """(B, 1, L, L) bool: a line sees the real lines (``causal``: only those up to itself), and always itself."""
    L = real.shape[1]
    mask = real[:, None, None, :].expand(-1, 1, L, L)  # (B, 1, L, L)
    eye = torch.eye(L, dtype=torch.bool, device=real.device)
    if causal:
        mask = mask & torch.ones(L, L, dtype=torch.bool, device=real.device).tril()
    return mask | eye


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(N, H) the mean of the real token states of each row of ``hidden`` (N, T, H)."""
    weight = attention_mask.to(hidden.dtype)[..., None]  # (N, T, 1)
    return (hidden * weight).sum(dim=1) / weight.sum(dim=1).clamp_min(1.0)


class AttentionPooling(nn.Module):
    """A learned softmax weighting of the token states."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.score = nn.Linear(hidden, 1)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        logits = self.score(hidden).squeeze(-1)  # (B, T)
        logits = logits.masked_fill(~attention_mask.bool(), torch.finfo(logits.dtype).min)
        weights = torch.softmax(logits.float(), dim=-1).to(hidden.dtype)  # (B, T)
        return torch.einsum("bt,bth->bh", weights, hidden)  # (B, H)


class AnomalyHead(nn.Module):
    """MLP on the pooled embedding: H -> head_hidden -> 1 (a logit)."""

    def __init__(self, hidden: int, inner: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden, inner)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(inner, 1)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(F.gelu(self.fc1(pooled)))).squeeze(-1)  # (B,)


# ----------------------------------------------------------------------------- the model


@dataclass
class DetectorOutput:
    """The outputs of one forward pass; losses are ``None`` when their labels were not given."""

    logits: torch.Tensor  # (B,) anomaly logit
    scores: torch.Tensor  # (B,) sigmoid(logits)
    pooled: torch.Tensor  # (B, H)
    router_probs: torch.Tensor  # (N, E)
    expert_mask: torch.Tensor  # (N, E)
    aux_loss: torch.Tensor  # ()
    loss: torch.Tensor | None = None
    cls_loss: torch.Tensor | None = None
    line_loss: torch.Tensor | None = None
    line_nll: torch.Tensor | None = None  # (B, L) NLL of each scored line's class, 0 elsewhere
    next_loss: torch.Tensor | None = None
    next_nll: torch.Tensor | None = None  # (B, L) NLL of the next line's class (or the end) at each line


def _scattered_nll(
    logits: torch.Tensor, targets: torch.Tensor, where: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of ``logits`` (M, C) against ``targets`` (M,), put back at the True places of
    ``where`` (0 elsewhere), and its mean (0 when M is 0)."""
    nll = F.cross_entropy(logits.float(), targets, reduction="none")  # (M,)
    full = torch.zeros(where.shape, dtype=nll.dtype, device=nll.device)
    full[where] = nll
    return full, (nll.mean() if nll.numel() else nll.sum())


def embedding_weight(encoder: nn.Module) -> torch.Tensor:
    """The (V, H) word embedding matrix of a transformers encoder."""
    weight = encoder.get_input_embeddings().weight  # type: ignore[operator]
    assert isinstance(weight, torch.Tensor)
    return weight


def _init_new_module(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class MoEBertForLogAnomaly(nn.Module):
    """Line encoder + sequence transformer + MoE + line heads + pooling + anomaly head; ``forward`` returns
    the loss with the outputs."""

    def __init__(self, config: DetectorConfig, encoder: PreTrainedModel) -> None:
        super().__init__()
        self.config = config
        self.encoder = encoder.requires_grad_(False)  # the line encoder: frozen, its vectors cached
        line_dim = int(encoder.config.hidden_size)
        hidden, classes = config.seq_hidden, config.num_classes
        self.line_proj = nn.Linear(line_dim, hidden)
        self.class_embed = nn.Embedding(classes, hidden)  # the line's identity in the vocabulary (or other)
        self.mask_embed = nn.Parameter(torch.zeros(hidden))  # a masked line's input
        self.pos_embed = nn.Embedding(config.max_lines, hidden)
        self.in_norm = nn.LayerNorm(hidden)
        self.dropout = nn.Dropout(config.seq_dropout)
        self.blocks = nn.ModuleList(
            Block(hidden, config.seq_heads, config.seq_intermediate, config.seq_dropout)
            for _ in range(config.seq_layers)
        )
        self.norm = nn.LayerNorm(hidden)
        self.moe = MoELayer(config, hidden)
        self.pool = AttentionPooling(hidden) if config.pooling == "attention" else None
        self.head = AnomalyHead(hidden, config.head_hidden, config.head_dropout)
        self.line_head = LineHead(hidden, classes)  # a masked line's class
        self.next_head = LineHead(hidden, classes + 1)  # the next line's class, or the end (the last class)
        for name, module in self.named_children():
            if name != "encoder":
                _init_new_module(module)
        nn.init.normal_(self.mask_embed, std=0.02)
        self.moe_mode: MoEMode = "top_p"
        config.encoder_config = encoder.config.to_dict()
        config.line_dim = line_dim

    @property
    def hidden_size(self) -> int:
        """Width of the pooled embedding."""
        return int(self.config.seq_hidden)

    @property
    def end_class(self) -> int:
        """The next head's class for "the sequence ends here"."""
        return int(self.config.num_classes)

    @property
    def device(self) -> torch.device:
        """Where the model's weights are."""
        return self.head.fc1.weight.device

    @torch.no_grad()
    def encode_lines(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(N, D) the unit-length mean-pooled encoder output of each tokenized line."""
        device = self.device
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.use_bf16(device)):
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (N, T, D)
        return F.normalize(mean_pool(hidden.float(), attention_mask), dim=-1)  # (N, D)

    def pooled_from(self, hidden: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """Pool line states (B, L, H) into (B, H)."""
        if self.pool is not None:
            return self.pool(hidden, real)
        if self.config.pooling == "max":
            return hidden.masked_fill(~real[..., None], torch.finfo(hidden.dtype).min).max(dim=1).values  # (B, H)
        return mean_pool(hidden, real)

    def forward(
        self,
        vectors: torch.Tensor,
        classes: torch.Tensor,
        real: torch.Tensor,
        labels: torch.Tensor | None = None,
        masked: torch.Tensor | None = None,
        line_labels: torch.Tensor | None = None,
        causal: bool = False,
        next_labels: torch.Tensor | None = None,
        moe_mode: MoEMode | None = None,
    ) -> DetectorOutput:
        """``vectors`` (B, L, D) line vectors, ``classes`` (B, L) line classes, ``real`` (B, L) bool, the
        lines that are there. ``labels`` (B,) 0/1 anomaly targets; ``masked`` (B, L) bool, lines shown as
        [MASK], with ``line_labels`` (B, L) their classes (-100 elsewhere); ``causal``: each line sees only
        the lines up to itself, with ``next_labels`` (B, L) the next line's class at each line (-100: none)."""
        mode = moe_mode or self.moe_mode
        device = self.device
        vectors, classes, real = vectors.to(device), classes.to(device), real.to(device).bool()
        _B, L = classes.shape
        if self.config.max_lines < L:
            raise ModelError(f"{L} lines exceed the model's {self.config.max_lines} positions: score in windows")
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.use_bf16(device)):
            x = self.line_proj(vectors.float()) + self.class_embed(classes)  # (B, L, H)
            if masked is not None:
                x = torch.where(masked.to(device)[..., None], self.mask_embed.to(x.dtype), x)
            x = self.in_norm(x + self.pos_embed.weight[:L])  # (B, L, H)
            x = self.dropout(x)
            attn = line_attention_mask(real, causal)  # (B, 1, L, L)
            for block in self.blocks:
                x = block(x, attn)
            moe = self.moe(self.norm(x), real, mode)  # (B, L, H)
            pooled = self.pooled_from(moe.hidden, real)  # (B, H)
            logits = self.head(pooled).float()  # (B,)
            line_logits = next_logits = None
            if line_labels is not None:
                line_labels = line_labels.to(device)
                scored = line_labels != -100  # (B, L)
                line_logits = self.line_head(moe.hidden[scored])  # (M, C)
            if next_labels is not None:
                next_labels = next_labels.to(device)
                next_scored = next_labels != -100  # (B, L)
                next_logits = self.next_head(moe.hidden[next_scored])  # (M, C + 1)
        out = DetectorOutput(
            logits=logits,
            scores=torch.sigmoid(logits),
            pooled=pooled.float(),
            router_probs=moe.router_probs,
            expert_mask=moe.expert_mask,
            aux_loss=moe.aux_loss,
        )
        losses: list[torch.Tensor] = []
        if labels is not None:
            out.cls_loss = F.binary_cross_entropy_with_logits(logits, labels.to(device).float())
            losses.append(out.cls_loss)
        if line_labels is not None and line_logits is not None:
            out.line_nll, out.line_loss = _scattered_nll(line_logits, line_labels[scored], scored)
            losses.append(out.line_loss)
        if next_labels is not None and next_logits is not None:
            out.next_nll, out.next_loss = _scattered_nll(next_logits, next_labels[next_scored], next_scored)
            losses.append(out.next_loss)
        if losses:
            total = torch.stack(losses).sum()
            if mode == "top_p" and self.config.lb_coef > 0:
                total = total + self.config.lb_coef * moe.aux_loss
            out.loss = total
        return out

    def use_bf16(self, device: torch.device) -> bool:
        """Whether forward runs under bfloat16 autocast (``precision``: auto = CPUs with AMX tiles)."""
        if self.config.precision == "bf16":
            return True
        if self.config.precision == "auto":
            return device.type == "cpu" and cpu_has_fast_bf16()
        return False

    # ------------------------------------------------------------------------- save / load

    def save_pretrained(self, save_dir: str | Path, tokenizer: PreTrainedTokenizerBase | None = None) -> None:
        """Write ``config.json``, ``model.safetensors`` and, when given, the tokenizer files."""
        out = Path(save_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.config.encoder_config = self.encoder.config.to_dict()
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
        self.config.to_json_file(out / CONFIG_NAME)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(out))

    @classmethod
    def from_pretrained(cls, load_dir: str | Path) -> MoEBertForLogAnomaly:
        """Rebuild a model saved by :meth:`save_pretrained` (no network, no pretrained encoder needed)."""
        folder = Path(load_dir)
        if not (folder / CONFIG_NAME).exists() or not (folder / WEIGHTS_NAME).exists():
            raise ModelError(f"{folder}: not a detector folder (needs {CONFIG_NAME} and {WEIGHTS_NAME})")
        config = DetectorConfig.from_json_file(folder / CONFIG_NAME)
        if not config.encoder_config or config.line_dim is None:
            raise ModelError(f"{folder}: a detector of an older format (token-level); train it again")
        encoder = encoder_from_config(config.encoder_config)
        model = cls(config, encoder)
        state = load_file(str(folder / WEIGHTS_NAME))
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing or unexpected:
            raise ModelError(
                f"{folder}: weights do not match the config (missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
        model.eval()
        return model


# ----------------------------------------------------------------------------- builders


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True on x86 CPUs with AMX (bfloat16 matrix products there run ~2x faster than float32).

    AVX512-BF16 alone does not count: on an AMD EPYC with it, bf16 autocast scored a batch at 226 seq/s
    against 275 in float32, and one sequence in 103 ms against 65 ms (the casts cost more than the
    narrower products save at this model's sizes)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="ignore")
    except OSError:
        return False
    return " amx_bf16" in flags


def encoder_from_config(encoder_config: dict[str, Any]) -> PreTrainedModel:
    """A randomly initialised encoder from a saved config dict (weights are loaded afterwards)."""
    d = dict(encoder_config)
    model_type = d.get("model_type", "bert")
    if model_type not in CONFIG_MAPPING:
        raise ModelError(f"unknown encoder model_type {model_type!r}")
    cfg = CONFIG_MAPPING[model_type].from_dict(d)
    try:
        model = AutoModel.from_config(cfg, add_pooling_layer=False)
    except TypeError:
        model = AutoModel.from_config(cfg)
    return model.float()  # a config saved from a half-precision checkpoint would build a half model


def _placeholder_phrase(token: str) -> str:
    """A plain-words reading of a placeholder, used to initialise its new embedding."""
    inner = token.strip("<>")
    if inner.startswith("dur:1e"):
        exponent = int(inner[len("dur:1e") : -2])
        return f"duration {10.0**exponent:g} milliseconds"
    words = {"ip": "ip address", "num": "number", "id": "identifier", "hex": "hex value", "dur:0": "zero duration"}
    return words.get(inner, inner)


def build_tokenizer(config: DetectorConfig) -> PreTrainedTokenizerBase:
    """The tokenizer of the encoder (the bundled one for ``mini-scratch``), with placeholder tokens added."""
    from transformers import AutoTokenizer

    source = resolve_encoder("bundled" if config.encoder == SCRATCH_ENCODER else config.encoder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the tokenizer of {source!r}: {exc}") from None
    if config.add_placeholder_tokens:
        tokenizer.add_tokens(list(PLACEHOLDER_TOKENS))
    return tokenizer


def build_model(config: DetectorConfig, tokenizer: PreTrainedTokenizerBase) -> MoEBertForLogAnomaly:
    """A fresh detector: pretrained (or scratch) encoder, new MoE and heads, embeddings sized to the tokenizer."""
    if config.encoder == SCRATCH_ENCODER:
        bert_cfg = BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=config.scratch_hidden,
            num_hidden_layers=config.scratch_layers,
            num_attention_heads=config.scratch_heads,
            intermediate_size=config.scratch_intermediate,
            max_position_embeddings=max(512, config.max_line_tokens),
            pad_token_id=tokenizer.pad_token_id or 0,
        )
        encoder = encoder_from_config(bert_cfg.to_dict())
    else:
        source = resolve_encoder(config.encoder)
        try:
            try:
                encoder = AutoModel.from_pretrained(source, add_pooling_layer=False)
            except TypeError:
                encoder = AutoModel.from_pretrained(source)
        except OSError as exc:
            raise ModelError(f"cannot load the encoder {source!r}: {exc}") from None
        encoder = encoder.float()  # a half-precision checkpoint trains in float32
        old_vocab = embedding_weight(encoder).shape[0]
        if len(tokenizer) > old_vocab:
            _grow_embeddings(encoder, tokenizer, old_vocab)
        if config.num_encoder_layers:
            _truncate_layers(encoder, config.num_encoder_layers)
    return MoEBertForLogAnomaly(config, encoder)


def _grow_embeddings(encoder: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, old_vocab: int) -> None:
    """Add rows for the new tokens, each the mean embedding of a plain-words reading of it."""
    encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    weight = embedding_weight(encoder)
    with torch.no_grad():
        for token_id in range(old_vocab, len(tokenizer)):
            token = tokenizer.convert_ids_to_tokens(token_id)
            phrase = _placeholder_phrase(str(token))
            pieces = [i for i in tokenizer(phrase, add_special_tokens=False)["input_ids"] if i < old_vocab]
            if pieces:
                weight[token_id] = weight[pieces].mean(dim=0)
            else:
                weight[token_id] = weight[:old_vocab].mean(dim=0)


def _truncate_layers(encoder: PreTrainedModel, keep: int) -> None:
    inner = getattr(encoder, "encoder", None)
    layers = getattr(inner, "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise ModelError(f"num_encoder_layers is not supported for a {type(encoder).__name__} encoder")
    if keep < len(layers):
        assert inner is not None
        inner.layer = nn.ModuleList(list(layers)[:keep])
        encoder.config.num_hidden_layers = keep


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (optionally only those that require grad)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


__all__ = [
    "AnomalyHead",
    "AttentionPooling",
    "Block",
    "DetectorOutput",
    "Expert",
    "LineHead",
    "MoEBertForLogAnomaly",
    "MoELayer",
    "SelfAttention",
    "build_model",
    "build_tokenizer",
    "count_parameters",
    "load_balancing_loss",
    "top_p_routing",
]
