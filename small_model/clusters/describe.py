"""What each cluster is: its size, distinctive templates, typical members, labels and a one-line description."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.schema import SequenceRecord
from small_model.clusters.config import JsonFields
from small_model.clusters.features import DeepFeaturizer

NORMAL_DESCRIPTION = "normal"
SIGNALS = {
    "swap": "steps out of order",
    "insert": "a step missing",
    "repeat": "a repeated event",
    "novel": "new messages",
    "value": "an out-of-range value",
}


@dataclass
class ClusterInfo(JsonFields):
    """What one cluster is: size, distinctive templates, typical members and (if known) its labels."""

    cluster_id: int
    size: int
    is_normal: bool
    description: str
    templates: list[dict[str, Any]]
    words: list[str]
    samples: list[dict[str, Any]]  # {"sequence_id", "log_entries"}
    labels: dict[str, int] = field(default_factory=dict)
    purity: float | None = None
    majority: str | None = None


def true_label(record: SequenceRecord) -> str | None:
    """The category a record is known to have: its anomaly type, ``normal`` for label 0, else ``None``."""
    if record.anomaly_type:
        return str(record.anomaly_type)
    if record.label == 0:
        return NORMAL_DESCRIPTION
    if record.label == 1:
        return "anomaly"
    return None


def distinctive_templates(
    template_ids: Sequence[Sequence[int]], labels: np.ndarray, cluster: int, top: int
) -> list[tuple[int, float, float]]:
    """(template id, share of the cluster's sequences holding it, contrast score) of its most distinctive templates."""
    inside = [set(t) for t, c in zip(template_ids, labels, strict=True) if c == cluster]
    outside = [set(t) for t, c in zip(template_ids, labels, strict=True) if c != cluster]
    df_in: Counter[int] = Counter(t for s in inside for t in s)
    df_out: Counter[int] = Counter(t for s in outside for t in s)
    n_in, n_out = max(len(inside), 1), max(len(outside), 1)
    scored = []
    for t, n in df_in.items():
        p_in = n / n_in
        p_out = df_out.get(t, 0) / n_out
        scored.append((t, p_in, p_in * math.log((p_in + 1e-3) / (p_out + 1e-3))))
    scored.sort(key=lambda r: (-r[2], r[0]))
    return [r for r in scored if r[2] > 0][:top]


def describe_clusters(
    records: Sequence[SequenceRecord],
    labels: np.ndarray,
    features: np.ndarray,
    template_ids: Sequence[Sequence[int]],
    templates: Mapping[int, str],
    featurizer: DeepFeaturizer,
    normal_cluster: int | None,
    samples: int = 5,
    top: int = 5,
) -> list[ClusterInfo]:
    """One :class:`ClusterInfo` per cluster: distinctive templates vs the rest, the members nearest its centre.

    The description names the structure signals most members show (steps out of order, a missing
    step, a repeated event, new messages, an out-of-range value) and the top two templates.
    """
    blocks = featurizer.split(features)
    vocabulary_block, vocabulary = blocks["vocabulary"], featurizer.vocabulary
    out = []
    for c in range(int(labels.max()) + 1 if len(labels) else 0):
        members = np.where(labels == c)[0]
        if len(members) == 0:
            continue
        centre = features[members].mean(0)
        order = members[np.argsort(((features[members] - centre) ** 2).sum(1), kind="stable")]
        picked = [
            {"sequence_id": records[i].sequence_id, "log_entries": list(records[i].log_entries)}
            for i in order[:samples]
        ]
        tops = distinctive_templates(template_ids, labels, c, top)
        tmpl: list[dict[str, Any]] = [
            {"template_id": t, "template": templates.get(t, "?"), "share": round(s, 3)} for t, s, _ in tops
        ]
        words: list[str] = []
        if vocabulary_block.shape[1]:
            mean = vocabulary_block[members].mean(0)
            words = [vocabulary[j] for j in np.argsort(-mean)[:top] if mean[j] > 0]
        known = [true_label(records[i]) for i in members]
        counts = Counter(k for k in known if k is not None)
        majority, purity = None, None
        if counts:
            majority, hits = counts.most_common(1)[0]
            purity = hits / sum(counts.values())
        is_normal = normal_cluster is not None and c == normal_cluster
        if is_normal:
            text = NORMAL_DESCRIPTION
        else:
            cue = "; ".join(t["template"][:80] for t in tmpl[:2]) or ", ".join(words[:4]) or "no distinctive template"
            shown = (blocks["structure"][members] >= 0.75).mean(0)  # share of members showing each signal
            signals = [SIGNALS[n] for n, v in zip(featurizer.structure_names, shown, strict=True) if v > 0.5]
            text = f"anomaly cluster {c} ({len(members)} seqs; {', '.join(signals) or 'no strong signal'}): {cue}"
        out.append(
            ClusterInfo(
                cluster_id=c,
                size=len(members),
                is_normal=is_normal,
                description=text,
                templates=tmpl,
                words=words,
                samples=picked,
                labels=dict(counts.most_common()),
                purity=purity,
                majority=majority,
            )
        )
    return out
