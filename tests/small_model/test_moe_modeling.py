"""MoE-BERT over log lines: shapes, routing, the load-balancing loss, windows, the line-vector cache,
learning, save/load (tiny random BERT)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from small_model.calibration import Calibration, ScoreStats, calibrate_fusion, squash, unsquash
from small_model.config import DetectorConfig
from small_model.data import LineVectors, window_owner, window_starts
from small_model.detection import Detection, risk_level
from small_model.metrics import best_f1_threshold
from small_model.modeling import (
    MoELayer,
    build_model,
    build_tokenizer,
    load_balancing_loss,
    top_p_routing,
)
from small_model.scoring import MoEBertDetector, line_batch

torch.set_num_threads(1)

FLOWS = [
    ["order-service request <id> received from <ip>", "validating cart took <dur:1e1ms>", "order created"],
    ["payment-service opening transaction", "capturing funds took <dur:1e2ms>", "transaction committed"],
    ["auth-service checking token", "login ok"],
]
VOCAB = sorted({line for flow in FLOWS for line in flow})


def tiny_config(**overrides: object) -> DetectorConfig:
    """A 2-layer, hidden-32 BERT line encoder from scratch with the bundled tokenizer, a hidden-32 sequence model."""
    base: dict[str, object] = {
        "encoder": "mini-scratch",
        "scratch_layers": 2,
        "scratch_hidden": 32,
        "scratch_heads": 2,
        "scratch_intermediate": 64,
        "seq_hidden": 32,
        "seq_heads": 2,
        "seq_intermediate": 64,
        "expert_hidden": 32,
        "head_hidden": 16,
        "max_lines": 16,
        "precision": "fp32",
        "line_vocab": VOCAB,
    }
    base.update(overrides)
    return DetectorConfig(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    return build_tokenizer(tiny_config())


def detector_of(tokenizer, **overrides: object) -> MoEBertDetector:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    return MoEBertDetector(build_model(tiny_config(**overrides), tokenizer), tokenizer)


def inputs(detector: MoEBertDetector, flows: list[list[str]] = FLOWS):  # type: ignore[no-untyped-def]
    """The model's inputs for whole sequences: (vectors, LineBatch)."""
    windows = [(detector.vectors.ids(f), detector.line_classes(f), True) for f in flows]
    batch = line_batch(windows, detector.model.end_class)
    return detector.vectors.table[batch.ids], batch


# ----------------------------------------------------------------------------- routing


@pytest.mark.parametrize(
    ("probs", "kept"),
    [
        ([0.5, 0.35, 0.1, 0.05], [True, True, False, False]),
        ([0.9, 0.05, 0.03, 0.02], [True, False, False, False]),
        ([0.25, 0.25, 0.25, 0.25], [True, True, True, True]),
        ([0.05, 0.1, 0.35, 0.5], [False, False, True, True]),  # order does not matter
        ([0.4, 0.4, 0.1, 0.1], [True, True, False, False]),  # exactly p is enough
        ([0.3, 0.3, 0.3, 0.1], [True, True, True, False]),
    ],
)
def test_top_p_keeps_the_smallest_set_reaching_p(probs: list[float], kept: list[bool]) -> None:
    weights, mask = top_p_routing(torch.tensor([probs]), 0.8)
    assert mask[0].tolist() == kept
    expected = torch.tensor(probs) * torch.tensor(kept)
    torch.testing.assert_close(weights[0], expected / expected.sum())
    assert weights[0][~mask[0]].abs().sum() == 0


def test_top_p_one_keeps_every_expert_with_mass_and_tiny_p_keeps_one() -> None:
    probs = torch.softmax(torch.randn(50, 4), dim=-1)
    assert top_p_routing(probs, 1.0)[1].all()
    assert (top_p_routing(probs, 0.01)[1].sum(dim=-1) == 1).all()
    top1 = top_p_routing(probs, 0.01)[1].float().argmax(dim=-1)
    assert torch.equal(top1, probs.argmax(dim=-1))


def test_load_balancing_loss_is_minimal_for_uniform_routing() -> None:
    n, e = 64, 4
    uniform = torch.full((n, e), 1.0 / e)
    uniform_loss = load_balancing_loss(uniform, top_p_routing(uniform, 0.8)[1])
    assert uniform_loss.item() == pytest.approx(1.0)
    skewed = torch.tensor([[0.85, 0.05, 0.05, 0.05]]).repeat(n, 1)
    skewed_loss = load_balancing_loss(skewed, top_p_routing(skewed, 0.8)[1])
    assert skewed_loss.item() == pytest.approx(4 * 0.85)
    g = torch.Generator().manual_seed(0)
    for scale in (0.5, 2.0, 5.0):
        probs = torch.softmax(scale * torch.randn(n, e, generator=g), dim=-1)
        loss = load_balancing_loss(probs, top_p_routing(probs, 0.8)[1])
        assert loss.item() >= uniform_loss.item() - 1e-6
    # padding tokens do not count
    token_mask = torch.tensor([1] * 10 + [0] * (n - 10))
    mixed = torch.cat([uniform[:10], skewed[10:]])
    masked_loss = load_balancing_loss(mixed, top_p_routing(mixed, 0.8)[1], token_mask)
    assert masked_loss.item() == pytest.approx(1.0)


def test_moe_layer_top_p_matches_a_per_token_computation() -> None:
    torch.manual_seed(0)
    layer = MoELayer(tiny_config(), hidden=32).eval()
    torch.nn.init.normal_(layer.router.weight, std=1.0)  # a decisive router: mixed expert counts
    hidden = torch.randn(2, 5, 32)
    attention_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    out = layer(hidden, attention_mask, "top_p")
    assert out.router_probs.shape == (8, 4)
    torch.testing.assert_close(out.router_probs.sum(-1), torch.ones(8))
    counts = out.expert_mask.sum(-1)
    assert counts.min() >= 1 and len(set(counts.tolist())) > 1
    real = hidden[attention_mask.bool()]
    for t in range(8):
        probs = out.router_probs[t]
        mix = sum(
            (probs[e] / probs[out.expert_mask[t]].sum()) * layer.experts[e](real[t : t + 1])
            for e in range(4)
            if out.expert_mask[t, e]
        )
        expected = layer.norm(real[t : t + 1] + mix)
        torch.testing.assert_close(out.hidden[attention_mask.bool()][t : t + 1], expected, atol=1e-5, rtol=1e-5)
    # padding positions pass through untouched
    torch.testing.assert_close(out.hidden[1, 3:], hidden[1, 3:])


def test_dense_mode_uses_every_expert_with_uniform_weights() -> None:
    torch.manual_seed(0)
    layer = MoELayer(tiny_config(), hidden=32).eval()
    hidden = torch.randn(1, 4, 32)
    out = layer(hidden, torch.ones(1, 4, dtype=torch.long), "dense")
    assert out.expert_mask.all()
    assert out.aux_loss.item() == 0.0
    x = hidden[0]
    mix = sum(expert(x) for expert in layer.experts) / 4
    torch.testing.assert_close(out.hidden[0], layer.norm(x + mix), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- the model


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_forward_shapes_and_router_probabilities(tokenizer, pooling: str) -> None:  # type: ignore[no-untyped-def]
    detector = detector_of(tokenizer, pooling=pooling)
    model = detector.model.eval()
    vectors, batch = inputs(detector)
    B, L = batch.classes.shape
    masked = torch.zeros(B, L, dtype=torch.bool)
    masked[:, 1] = True
    line_labels = batch.classes.masked_fill(~masked, -100)
    out = model(vectors, batch.classes, batch.real, labels=torch.tensor([0, 1, 0]), masked=masked,
                line_labels=line_labels)  # fmt: skip
    n_real = int(batch.real.sum())
    assert vectors.shape == (B, L, 32) and out.logits.shape == (B,) and out.scores.shape == (B,)
    assert ((out.scores > 0) & (out.scores < 1)).all()
    assert out.pooled.shape == (B, 32)
    assert out.router_probs.shape == (n_real, 4) and out.router_probs.dtype == torch.float32
    torch.testing.assert_close(out.router_probs.sum(dim=-1), torch.ones(n_real))
    assert out.expert_mask.shape == (n_real, 4) and out.expert_mask.any(dim=-1).all()
    assert out.line_nll is not None and out.line_nll.shape == (B, L)
    assert ((out.line_nll > 0) == masked).all()
    assert out.loss is not None and out.cls_loss is not None and out.line_loss is not None
    expected = out.cls_loss + out.line_loss + model.config.lb_coef * out.aux_loss
    torch.testing.assert_close(out.loss, expected)
    assert model(vectors, batch.classes, batch.real).loss is None  # without labels: no loss
    with pytest.raises(Exception, match="positions"):  # a window longer than the positions is refused
        model(torch.zeros(1, 17, 32), torch.zeros(1, 17, dtype=torch.long), torch.ones(1, 17, dtype=torch.bool))


def test_next_targets_name_the_next_line_then_the_end(tokenizer) -> None:  # type: ignore[no-untyped-def]
    detector = detector_of(tokenizer)
    end = detector.model.end_class
    ids = [0, 1, 2]
    batch = line_batch([(ids, [5, 6, 7], True), (ids[:2], [5, 6], False)], end)
    assert batch.nxt.tolist() == [[6, 7, end], [6, -100, -100]]  # a window that does not end the sequence: no end
    assert batch.real.tolist() == [[True, True, True], [True, True, False]]


def test_padding_does_not_change_a_sequence_score(tokenizer) -> None:  # type: ignore[no-untyped-def]
    detector = detector_of(tokenizer)
    model = detector.model.eval()
    with torch.no_grad():
        alone = model(*_args(inputs(detector, FLOWS[2:]))).logits
        padded = model(*_args(inputs(detector))).logits
    torch.testing.assert_close(alone[0], padded[2], atol=1e-5, rtol=1e-5)


def _args(pair):  # type: ignore[no-untyped-def]
    vectors, batch = pair
    return vectors, batch.classes, batch.real


def test_causal_attention_hides_later_lines(tokenizer) -> None:  # type: ignore[no-untyped-def]
    detector = detector_of(tokenizer)
    model = detector.model.eval()
    a = [FLOWS[0][0], FLOWS[0][1], FLOWS[0][2]]
    b = [FLOWS[0][0], FLOWS[0][1], FLOWS[1][0]]  # the last line differs
    vectors, batch = inputs(detector, [a, b])
    targets = batch.nxt[:1].repeat(2, 1)  # the same targets for both rows
    targets[:, 2] = -100
    with torch.no_grad():
        causal = model(vectors, batch.classes, batch.real, causal=True, next_labels=targets)
        full = model(vectors, batch.classes, batch.real, next_labels=targets)
    assert causal.next_nll is not None and full.next_nll is not None
    torch.testing.assert_close(causal.next_nll[0, :2], causal.next_nll[1, :2])  # lines 0-1 do not see line 2
    assert not torch.allclose(full.next_nll[0, :2], full.next_nll[1, :2])  # bidirectional: they do


def test_placeholders_are_single_tokens(tokenizer) -> None:  # type: ignore[no-untyped-def]
    for token in ("<ip>", "<id>", "<dur:1e2ms>", "<num>"):
        assert len(tokenizer.tokenize(token)) == 1, token


def test_line_vectors_encode_each_distinct_line_once() -> None:
    calls: list[list[str]] = []

    def encode(lines: list[str]) -> torch.Tensor:
        calls.append(list(lines))
        return torch.tensor([[float(len(line)), 1.0] for line in lines])

    cache = LineVectors(encode, dim=2, max_lines=4, batch_size=2)
    ids = cache.ids(["aa", "b", "aa", "ccc"])
    assert ids[0] == ids[2] and len(set(ids)) == 3 and len(cache) == 3
    assert sorted(x for c in calls for x in c) == ["aa", "b", "ccc"]  # each distinct line once
    assert cache.table[ids[3]].tolist() == [3.0, 1.0]
    calls.clear()
    assert cache.ids(["b", "aa"]) == [ids[1], ids[0]] and calls == []  # cached: nothing encoded
    again = cache.ids(["dd", "eee"])  # over the cap: a fresh table, still right
    assert [cache.table[i][0].item() for i in again] == [2.0, 3.0] and len(cache) == 2


@pytest.mark.parametrize(("length", "size"), [(1, 16), (16, 16), (17, 16), (40, 16), (1000, 16), (513, 512)])
def test_windows_score_every_line_once_with_context(length: int, size: int) -> None:
    starts = window_starts(length, size)
    owner = window_owner(length, starts, size)
    assert starts[0] == 0 and starts[-1] + size >= length and all(s + size <= max(length, size) for s in starts)
    for i, w in enumerate(owner):
        assert starts[w] <= i < starts[w] + size  # the owner shows the line
        assert i - starts[w] >= min(i, size // 2) - 1 or w == 0  # with context before it
        if i + 1 < length:
            assert starts[owner[i + 1]] <= i  # the owner of the next line shows this one (forward modeling)


def test_loss_falls_on_a_toy_set(tokenizer) -> None:  # type: ignore[no-untyped-def]
    detector = detector_of(tokenizer)
    model = detector.model
    vectors, batch = inputs(detector)
    labels = torch.tensor([0.0, 1.0, 0.0])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    losses = []
    for _ in range(30):
        out = model(vectors, batch.classes, batch.real, labels=labels, causal=True, next_labels=batch.nxt)
        assert out.loss is not None
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(out.loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert not any(p.requires_grad for p in model.encoder.parameters())  # the line encoder stays frozen


def test_config_json_roundtrip(tmp_path: Path) -> None:
    config = tiny_config(top_p=0.7, num_experts=3)
    config.to_json_file(tmp_path / "config.json")
    loaded = DetectorConfig.from_json_file(tmp_path / "config.json")
    assert loaded.to_dict() == config.to_dict()
    data = json.loads((tmp_path / "config.json").read_text())
    data["future_field"] = 1
    assert DetectorConfig.from_dict(data).extra["future_field"] == 1
    with pytest.raises(ValueError, match="top_p"):
        DetectorConfig(top_p=0.0)
    with pytest.raises(ValueError, match="max_lines"):
        DetectorConfig(max_lines=7)


def test_save_then_load_gives_identical_scores(tokenizer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    detector = detector_of(tokenizer)
    calib = [FLOWS[i % 3] for i in range(12)]
    detector.fit_line_baseline(calib)
    detector.bank = torch.as_tensor(detector.line_scores(calib, recon=False).pooled)
    raw = detector.raw_from_lines(calib)
    detector.calibration = Calibration(
        mode="unsupervised", fused=True, weights={"head": 0.2, "knn": 0.3, "lines": 0.2, "next": 0.3}, threshold=0.6,
        stats={c: ScoreStats.robust(raw[c]) for c in ("head", "knn", "lines", "next")},
        line_baseline=detector.calibration.line_baseline, line_scale=detector.calibration.line_scale,
        next_baseline=detector.calibration.next_baseline, next_scale=detector.calibration.next_scale,
    )  # fmt: skip
    sequences = [["order-service request 7 received from 10.0.0.1", "order created"], ["login ok"], []]
    before = detector.score(sequences)
    path = detector.save_pretrained(tmp_path / "artifact")
    loaded = MoEBertDetector.from_pretrained(path)
    np.testing.assert_allclose(loaded.score(sequences), before, rtol=1e-6, atol=1e-7)
    assert loaded.version == detector.version and loaded.version.startswith("moebert-")
    assert loaded.threshold == 0.6 and loaded.mode == "unsupervised"
    raw = loaded.raw_from_lines([["login ok"]])
    np.testing.assert_array_equal(raw["recon"], np.maximum(raw["lines"], raw["next"]))
    (path / "calibration.json").write_text('{"no_such_field": 1}')
    with pytest.raises(Exception, match="calibration"):
        MoEBertDetector.from_pretrained(path)


def test_line_baseline_pools_the_rare_lines(tokenizer) -> None:  # type: ignore[no-untyped-def]
    detector = detector_of(tokenizer)
    common, rare = FLOWS[0], FLOWS[2]
    detector.fit_line_baseline([common] * 6 + [rare] * 2, min_count=3)  # each rare line twice: pooled
    cal = detector.calibration
    assert cal.line_baseline is not None and cal.line_scale is not None and cal.next_scale is not None
    c = detector.line_classes(common + rare)
    other = len(VOCAB)
    for k in c[:3]:
        assert cal.line_scale[k] >= 0.5  # its own stats (std + 0.5)
    assert cal.line_baseline[c[3]] == cal.line_baseline[c[4]] != 0.0  # rare lines share pooled stats
    assert cal.line_baseline[other] == 0.0 and cal.line_scale[other] == 1.0  # other keeps its raw NLL
    assert len(cal.next_baseline or []) == other + 2  # the next head's classes end with the end


def test_line_scores_cover_every_line_of_a_long_sequence_once(tokenizer) -> None:  # type: ignore[no-untyped-def]
    detector = detector_of(tokenizer)  # 16 positions: a 100-line sequence takes 12 windows
    long = [FLOWS[i % 3][i % 2] for i in range(100)]
    scores = detector.line_scores([long, FLOWS[0], long])
    assert [len(x) for x in scores.line_nll] == [100, 3, 100]
    assert all((x > 0).all() for x in scores.line_nll) and all((x > 0).all() for x in scores.next_nll)
    assert scores.next_cls[0][-1] == detector.model.end_class  # the end after the last line is scored
    np.testing.assert_array_equal(scores.line_nll[0], scores.line_nll[2])  # deterministic
    assert len(detector.line_contributions(long)) == 100


def test_best_f1_threshold_and_risk_levels() -> None:
    thr, f1 = best_f1_threshold(np.array([0, 0, 1, 1]), np.array([0.1, 0.3, 0.6, 0.9]))
    assert f1 == 1.0 and 0.3 < thr < 0.6
    assert risk_level(0.9, 0.5) == "high"
    assert risk_level(0.7, 0.5) == "medium"
    assert risk_level(0.4, 0.5) == "low"
    assert risk_level(0.9, 0.95) == "low"
    # a decision of its own (DeepLog's any-miss rule) is graded by the same rule
    assert Detection.of(0.9, True) == Detection(0.9, True, "high")
    assert Detection.of(0.3, True).risk == "medium" and Detection.of(0.95, False).risk == "low"


def test_fusion_gives_weight_only_to_parts_that_add_something() -> None:
    """A part that separates validation alone keeps all the weight; mixing in a weaker part (ties on
    validation) is not preferred; a part that adds what the others miss gets its weight."""
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(100), np.ones(50)].astype(int)
    perfect = np.r_[rng.normal(0, 1, 100), rng.normal(10, 1, 50)]
    noise = rng.normal(0, 1, 150)
    raw = {"head": noise, "knn": noise.copy(), "lines": noise.copy(), "next": perfect}
    stats = {c: ScoreStats.robust(v[:100]) for c, v in raw.items()}
    weights, threshold, objective = calibrate_fusion(raw, y, stats)
    assert 0 < threshold < 1
    assert weights == {"head": 0.0, "knn": 0.0, "lines": 0.0, "next": 1.0} and objective == pytest.approx(2.0)
    # two halves of the anomalies, each seen by one part: both parts get weight
    half = np.r_[rng.normal(0, 1, 100), rng.normal(10, 1, 25), rng.normal(0, 1, 25)]
    other = np.r_[rng.normal(0, 1, 100), rng.normal(0, 1, 25), rng.normal(10, 1, 25)]
    raw = {"head": noise, "knn": noise.copy(), "lines": half, "next": other}
    stats = {c: ScoreStats.robust(v[:100]) for c, v in raw.items()}
    weights, _, _ = calibrate_fusion(raw, y, stats)
    assert weights["lines"] > 0 and weights["next"] > 0 and weights["head"] == weights["knn"] == 0.0


def test_fusion_threshold_lies_midway_in_robust_sigmas() -> None:
    """The cut sits halfway between the validation scores on either side of it on the scale of robust sigmas,
    not on the squashed scale (which packs high scores together and would put it near the lower one)."""
    y = np.r_[np.zeros(50), np.ones(10)].astype(int)
    stats = {"next": ScoreStats(center=0.0, scale=1.0, offset=0.0)}
    # normals up to 10 sigmas, anomalies from 30
    raw = {"next": np.r_[np.linspace(0.0, 10.0, 50), np.linspace(30.0, 40.0, 10)]}
    weights, threshold, _ = calibrate_fusion(raw, y, stats)
    assert weights["next"] == 1.0
    assert unsquash(np.asarray(threshold)) == pytest.approx(20.0)  # midway between 10 and 30 sigmas
    assert squash(unsquash(np.asarray([0.01, 0.3, 0.5, 0.9, 0.999]))) == pytest.approx([0.01, 0.3, 0.5, 0.9, 0.999])


def test_fusion_prefers_the_part_that_ranks_the_top_right() -> None:
    """Two parts with the same best F1 on validation: the one whose highest scores are anomalies keeps the
    larger weight over one that orders the normal bulk better (higher ROC-AUC) but puts normal sequences
    above every anomaly (the real-HDFS failure: kNN chosen alone, test F1 0.49)."""
    rng = np.random.default_rng(1)
    y = np.r_[np.zeros(200), np.ones(20)].astype(int)
    # half the anomalies far on top, half lost in the normal bulk: best F1 2*10/30, ROC-AUC ~0.75
    top = np.r_[rng.normal(0, 1, 200), rng.normal(12, 1, 10), rng.normal(0, 1, 10)]
    # every anomaly above 180 normals, 20 normals above every anomaly: best F1 2*20/60, ROC-AUC 0.9
    bulk = np.r_[rng.normal(0, 1, 180), rng.normal(20, 0.5, 20), rng.normal(5, 0.2, 20)]
    raw = {"knn": bulk, "next": top}
    stats = {c: ScoreStats.robust(v[:200]) for c, v in raw.items()}
    weights, _, _ = calibrate_fusion(raw, y, stats)
    assert weights["next"] > weights["knn"] and weights["next"] >= 0.5, weights


def test_a_small_line_cache_gives_the_same_scores(tokenizer) -> None:  # type: ignore[no-untyped-def]
    """A cache that starts afresh while a batch is prepared keeps every row it handed out valid."""
    detector = detector_of(tokenizer)
    sequences = [[*flow, f"extra line {i}"] for i, flow in enumerate(FLOWS * 3)]
    full = detector.line_scores(sequences)
    detector.vectors = LineVectors(detector._encode_lines, detector.vectors.dim, max_lines=4)
    small = detector.line_scores(sequences)
    np.testing.assert_allclose(small.head, full.head, rtol=1e-5, atol=1e-6)
    for a, b in zip(small.next_nll, full.next_nll, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
