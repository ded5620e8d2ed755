"""MoE-BERT modeling: shapes, routing, the load-balancing loss, learning, save/load (tiny random BERT)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from small_model.config import DetectorConfig
from small_model.data import (
    draw_lines,
    encode_texts,
    line_index,
    line_keys,
    line_targets,
    maskable,
    next_targets,
    pad_batch,
    random_mlm_mask,
    special_ids,
    strided_masks,
)
from small_model.modeling import (
    MoEBertForLogAnomaly,
    MoELayer,
    block_causal_mask,
    build_model,
    build_tokenizer,
    load_balancing_loss,
    top_p_routing,
)
from small_model.scoring import Calibration, MoEBertDetector, ScoreStats, best_f1_threshold, risk_level

torch.set_num_threads(1)

TEXTS = [
    "order-service request <id> received from <ip> [SEP] validating cart took <dur:1e1ms> [SEP] order created",
    "payment-service opening transaction [SEP] capturing funds took <dur:1e2ms> [SEP] transaction committed",
    "auth-service checking token [SEP] login ok",
]


def tiny_config(**overrides: object) -> DetectorConfig:
    """A 2-layer, hidden-32 BERT from scratch with the bundled tokenizer."""
    base: dict[str, object] = {
        "encoder": "mini-scratch",
        "scratch_layers": 2,
        "scratch_hidden": 32,
        "scratch_heads": 2,
        "scratch_intermediate": 64,
        "expert_hidden": 32,
        "head_hidden": 16,
        "max_length": 64,
        "precision": "fp32",
    }
    base.update(overrides)
    return DetectorConfig(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    return build_tokenizer(tiny_config())


def batch(tokenizer, texts=TEXTS):  # type: ignore[no-untyped-def]
    return pad_batch(encode_texts(tokenizer, texts, 64), int(tokenizer.pad_token_id))


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
    layer = MoELayer(tiny_config(dense_weights="uniform"), hidden=32).eval()
    hidden = torch.randn(1, 4, 32)
    out = layer(hidden, torch.ones(1, 4, dtype=torch.long), "dense")
    assert out.expert_mask.all()
    assert out.aux_loss.item() == 0.0
    x = hidden[0]
    mix = sum(expert(x) for expert in layer.experts) / 4
    torch.testing.assert_close(out.hidden[0], layer.norm(x + mix), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- the model


@pytest.mark.parametrize("pooling", ["cls", "attention"])
def test_forward_shapes_and_router_probabilities(tokenizer, pooling: str) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = build_model(tiny_config(pooling=pooling), tokenizer).eval()
    input_ids, attention_mask = batch(tokenizer)
    B, T = input_ids.shape
    gen = torch.Generator().manual_seed(0)
    masked, mlm_labels = random_mlm_mask(
        input_ids, attention_mask, special_ids(tokenizer), tokenizer.mask_token_id, len(tokenizer), 0.15, gen
    )
    out = model(input_ids=masked, attention_mask=attention_mask, labels=torch.tensor([0, 1, 0]), mlm_labels=mlm_labels)
    n_real = int(attention_mask.sum())
    assert out.logits.shape == (B,) and out.scores.shape == (B,)
    assert ((out.scores > 0) & (out.scores < 1)).all()
    assert out.pooled.shape == (B, 32)
    assert out.router_probs.shape == (n_real, 4) and out.router_probs.dtype == torch.float32
    torch.testing.assert_close(out.router_probs.sum(dim=-1), torch.ones(n_real))
    assert out.expert_mask.shape == (n_real, 4) and out.expert_mask.any(dim=-1).all()
    assert out.mlm_nll is not None and out.mlm_nll.shape == (B, T)
    assert ((out.mlm_nll > 0) == (mlm_labels != -100)).all()
    assert out.loss is not None and out.cls_loss is not None and out.mlm_loss is not None
    expected = out.cls_loss + out.mlm_loss + model.config.lb_coef * out.aux_loss
    torch.testing.assert_close(out.loss, expected)
    # without labels: no loss
    assert model(input_ids=input_ids, attention_mask=attention_mask).loss is None


def test_padding_does_not_change_a_sequence_score(tokenizer) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = build_model(tiny_config(), tokenizer).eval()
    alone_ids, alone_mask = batch(tokenizer, TEXTS[2:])
    padded_ids, padded_mask = batch(tokenizer)
    with torch.no_grad():
        alone = model(input_ids=alone_ids, attention_mask=alone_mask).logits
        padded = model(input_ids=padded_ids, attention_mask=padded_mask).logits
    torch.testing.assert_close(alone[0], padded[2], atol=1e-5, rtol=1e-5)


def test_placeholders_are_single_tokens(tokenizer) -> None:  # type: ignore[no-untyped-def]
    pieces = tokenizer.tokenize("took <dur:1e2ms> from <ip> id <num>")
    assert "<dur:1e2ms>" in pieces and "<ip>" in pieces and "<num>" in pieces


def test_strided_masks_cover_each_token_once(tokenizer) -> None:  # type: ignore[no-untyped-def]
    input_ids, attention_mask = batch(tokenizer)
    never = special_ids(tokenizer)
    passes = strided_masks(input_ids, attention_mask, never, tokenizer.mask_token_id, 3)
    covered = torch.stack([(labels != -100).long() for _, labels in passes]).sum(dim=0)
    special = torch.zeros_like(input_ids, dtype=torch.bool)
    for i in never:
        special |= input_ids == i
    assert torch.equal(covered, (attention_mask.bool() & ~special).long())
    again = strided_masks(input_ids, attention_mask, never, tokenizer.mask_token_id, 3)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(passes, again, strict=True))


def test_line_masks_cover_whole_lines_once(tokenizer) -> None:  # type: ignore[no-untyped-def]
    input_ids, attention_mask = batch(tokenizer)
    never, sep = special_ids(tokenizer), tokenizer.sep_token_id
    lines = line_index(input_ids, sep)
    passes = strided_masks(input_ids, attention_mask, never, tokenizer.mask_token_id, 2, sep_id=sep)
    can = maskable(input_ids, attention_mask, never)
    covered = torch.stack([(labels != -100).long() for _, labels in passes]).sum(dim=0)
    assert torch.equal(covered, can.long())  # every maskable token exactly once over the passes
    for j, (masked, labels) in enumerate(passes):
        chosen = labels != -100
        # pass j masks every maskable token of the lines with index % 2 == j, and nothing else
        assert torch.equal(chosen, can & (lines % 2 == j))
        assert (masked[chosen] == tokenizer.mask_token_id).all()
        assert torch.equal(labels[chosen], input_ids[chosen])


def test_random_line_masking_masks_whole_lines(tokenizer) -> None:  # type: ignore[no-untyped-def]
    input_ids, attention_mask = batch(tokenizer)
    never, sep = special_ids(tokenizer), tokenizer.sep_token_id
    can = maskable(input_ids, attention_mask, never)
    lines = line_index(input_ids, sep)
    gen = torch.Generator().manual_seed(3)
    drawn = 0
    for _ in range(20):
        whole = draw_lines(input_ids, sep, 0.5, gen)
        assert whole.shape == (input_ids.shape[0], int(lines.max()) + 1)
        # token probability ~0: what is masked comes from the drawn lines (plus one token per row)
        _, labels = random_mlm_mask(
            input_ids, attention_mask, never, tokenizer.mask_token_id, len(tokenizer), 1e-9, gen, whole, sep
        )
        chosen = labels != -100
        for b in range(input_ids.shape[0]):
            for k in range(int(lines[b].max()) + 1):
                in_line = can[b] & (lines[b] == k)
                n = int((chosen[b] & in_line).sum())
                if whole[b, k]:
                    assert n == int(in_line.sum())
                    drawn += 1
                else:
                    assert n <= 1
    assert drawn > 20  # about half of the 9 lines in each of 20 draws


def test_line_targets_skip_cut_lines(tokenizer) -> None:  # type: ignore[no-untyped-def]
    vocab = {"login ok": 0, "checking token": 1}
    keys = [line_keys(t, " [SEP] ", vocab, len(vocab)) for t in TEXTS]
    assert keys[2] == [2, 0]  # "auth-service checking token" is not in the vocabulary: other
    ids = encode_texts(tokenizer, TEXTS, 12)  # the first two texts are cut inside their second line
    input_ids, _ = pad_batch(ids, tokenizer.pad_token_id)
    chosen = torch.ones((3, 3), dtype=torch.bool)
    targets = line_targets(input_ids, keys, tokenizer.sep_token_id, chosen)
    assert targets[0].tolist() == [keys[0][0], -100, -100]  # only the whole first line keeps a target
    full = line_targets(pad_batch(encode_texts(tokenizer, TEXTS, 128), 0)[0], keys, tokenizer.sep_token_id, chosen)
    assert full[2].tolist() == [2, 0, -100]  # two lines only
    assert (line_targets(input_ids, keys, tokenizer.sep_token_id, ~chosen) == -100).all()


def test_next_targets_name_the_next_line_then_the_end(tokenizer) -> None:  # type: ignore[no-untyped-def]
    keys = [[5, 6, 7], [1, 2, 3], [4, 0]]
    end = 9
    full, _ = pad_batch(encode_texts(tokenizer, TEXTS, 128), tokenizer.pad_token_id)
    assert next_targets(full, keys, tokenizer.sep_token_id, end).tolist() == [[6, 7, 9], [2, 3, 9], [0, 9, -100]]
    cut, _ = pad_batch(encode_texts(tokenizer, TEXTS, 12), tokenizer.pad_token_id)  # cut inside the second line
    assert next_targets(cut, keys, tokenizer.sep_token_id, end)[:2].tolist() == [[6, -100], [2, -100]]


def test_block_causal_attention_hides_later_lines(tokenizer) -> None:  # type: ignore[no-untyped-def]
    """Forward line modeling: what a line's state predicts depends on that line and the ones before it,
    never on a later line; the bidirectional rows of the same batch do see later lines."""
    torch.manual_seed(0)
    model = build_model(tiny_config(**NEXT_LINE), tokenizer).eval()
    assert model.next_head is not None
    texts = ["order-service started [SEP] retry [SEP] disk full", "order-service started [SEP] retry [SEP] login ok"]
    input_ids, attention_mask = batch(tokenizer, texts)
    mask = block_causal_mask(input_ids, attention_mask, tokenizer.sep_token_id)  # (2, T, T)
    lines = line_index(input_ids, tokenizer.sep_token_id)
    first_sep = int((input_ids[0] == tokenizer.sep_token_id).nonzero()[0])
    assert mask[0, first_sep].bool().tolist() == (lines[0] == 0).tolist()  # line 0 sees line 0 only
    targets = torch.tensor([[1, 2, 3], [1, 2, 3]])  # the same targets: NLLs can be compared
    with torch.no_grad():
        causal = model(input_ids=input_ids, attention_mask=attention_mask, causal_rows=torch.tensor([True, True]),
                       next_labels=targets)  # fmt: skip
        both = model(input_ids=input_ids, attention_mask=attention_mask, labels=torch.zeros(2))
    assert causal.next_nll is not None and causal.next_loss is not None
    torch.testing.assert_close(causal.next_nll[0, :2], causal.next_nll[1, :2])  # lines 0-1 are shared
    assert not torch.allclose(causal.next_nll[0, 2], causal.next_nll[1, 2])  # line 2 differs
    assert not torch.allclose(both.pooled[0], both.pooled[1])


def test_loss_falls_on_a_toy_set(tokenizer) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = build_model(tiny_config(), tokenizer)
    texts = [*TEXTS, "auth-service checking token [SEP] ERROR login failed [SEP] ERROR account locked"]
    input_ids, attention_mask = batch(tokenizer, texts)
    labels = torch.tensor([0.0, 0.0, 0.0, 1.0])
    never = special_ids(tokenizer)
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(40):
        masked, mlm_labels = random_mlm_mask(
            input_ids, attention_mask, never, tokenizer.mask_token_id, len(tokenizer), 0.3, gen
        )
        out = model(input_ids=masked, attention_mask=attention_mask, labels=labels, mlm_labels=mlm_labels,
                    moe_mode="dense" if step < 20 else "top_p")  # fmt: skip
        assert out.loss is not None
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(out.loss.item())
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])
    model.eval()
    with torch.no_grad():
        scores = model(input_ids=input_ids, attention_mask=attention_mask).scores
    assert scores[3] > scores[:3].max()


def test_freeze_lower_layers(tokenizer) -> None:  # type: ignore[no-untyped-def]
    model = build_model(tiny_config(freeze_layers=1), tokenizer)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert any(n.startswith("encoder.embeddings.") for n in frozen)
    assert any(n.startswith("encoder.encoder.layer.0.") for n in frozen)
    assert not any(n.startswith("encoder.encoder.layer.1.") for n in frozen)
    assert not any(n.startswith(("moe.", "head.", "mlm_head.")) for n in frozen)


# ----------------------------------------------------------------------------- save / load


def test_config_json_roundtrip(tmp_path: Path) -> None:
    cfg = tiny_config(pooling="attention", top_p=0.7)
    cfg.to_json_file(tmp_path / "c.json")
    again = DetectorConfig.from_json_file(tmp_path / "c.json")
    assert again == cfg
    assert json.loads((tmp_path / "c.json").read_text())["top_p"] == 0.7
    with pytest.raises(ValueError):
        DetectorConfig(top_p=0.0)


LINE_VOCAB = {"recon_masking": "lines", "mlm_line_probability": 0.25, "line_vocab": ["order-service started", "retry"]}
NEXT_LINE = {**LINE_VOCAB, "next_line": True}


@pytest.mark.parametrize("masking", [{}, LINE_VOCAB, NEXT_LINE], ids=["tokens", "lines", "lines+next"])
def test_save_then_load_gives_identical_scores(tokenizer, tmp_path: Path, masking: dict) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = build_model(tiny_config(pooling="attention", **masking), tokenizer).eval()
    assert (model.line_head is not None) == bool(masking)
    bank = torch.randn(20, 32)
    calibration = Calibration(
        mode="unsupervised",
        fused=True,
        weights={"head": 0.2, "knn": 0.5, "recon": 0.3},
        threshold=0.4,
        stats={"head": ScoreStats(0.1, 0.5, 3.0), "knn": ScoreStats(0.5, 0.1, 3.0), "recon": ScoreStats(9.0, 0.5, 3)},
        knn_k=3,
    )
    detector = MoEBertDetector(model, tokenizer, calibration=calibration, bank=bank)
    sequences = [["2024-01-01 10:00:00 INFO order-service started", "took 12 ms"], ["ERROR disk full", "retry"]]
    before = detector.score(sequences)
    path = detector.save_pretrained(tmp_path / "det")
    for name in ("config.json", "model.safetensors", "tokenizer.json", "normalizer.json", "calibration.json",
                 "embedding_bank.safetensors"):  # fmt: skip
        assert (path / name).exists(), name
    loaded = MoEBertDetector.from_pretrained(path)
    after = loaded.score(sequences)
    np.testing.assert_array_equal(before, after)
    assert ((after >= 0) & (after <= 1)).all()
    assert loaded.version.startswith("moebert-") and loaded.version == detector.version
    assert loaded.threshold == 0.4
    assert loaded.embed(sequences).shape == (2, 32)
    contributions = loaded.line_contributions(sequences[1])
    assert len(contributions) == 2 and all(np.isfinite(contributions))
    assert isinstance(MoEBertForLogAnomaly.from_pretrained(path), MoEBertForLogAnomaly)
    assert loaded.config.line_vocab == model.config.line_vocab
    raw = loaded.raw_scores(sequences)
    assert raw["recon"].shape == (2,) and (raw["recon"] > 0).all()
    assert loaded.raw_from_texts([], ["head", "knn", "recon"])["recon"].shape == (0,)  # nothing to score
    if masking.get("next_line"):  # the worst of masked and forward line modeling
        np.testing.assert_array_equal(raw["recon"], np.maximum(raw["recon:lines"], raw["recon:next"]))


def test_line_baseline_pools_the_rare_lines(tokenizer) -> None:  # type: ignore[no-untyped-def]
    """Classes seen often get their own mean and spread; rare vocabulary lines share the stats of all
    their occurrences; a line outside the vocabulary keeps its raw NLL (baseline 0, scale 1)."""
    torch.manual_seed(0)
    vocab = ["flow starts", "step one", "step two", "flow ends", "gc pause", "health check", "cache warm"]
    model = build_model(tiny_config(recon_masking="lines", mlm_line_probability=0.25, line_vocab=vocab,
                                    next_line=True), tokenizer).eval()  # fmt: skip
    common = ["flow starts", "step one", "step two", "flow ends"]
    texts = [" [SEP] ".join([*common[:2], f"variant {i}", *common[2:]]) for i in range(2)]  # "variant": other
    texts += [
        " [SEP] ".join([*common[:k], rare, *common[k:]])
        for k, rare in ((1, "gc pause"), (3, "health check"), (2, "gc pause"))
    ]
    detector = MoEBertDetector(model, tokenizer)
    notes = detector.fit_line_baseline(texts, min_count=3)
    cal = detector.calibration
    assert cal.line_baseline is not None and cal.line_scale is not None and cal.next_baseline is not None
    assert notes["line_baseline_classes"] == 4 and notes["line_rare_pooled"] == 3  # gc pause twice, health check
    input_ids, attention_mask = batch(tokenizer, texts)
    with torch.no_grad():
        nll, classes = detector._line_nll(input_ids, attention_mask, texts)
    rare = (classes == 4) | (classes == 5)
    pooled = nll[rare]
    gc, health, never, other = 4, 5, 6, len(vocab)
    for c in (gc, health, never):  # "cache warm" never occurs: the pooled stats too
        assert cal.line_baseline[c] == pytest.approx(float(pooled.mean()), abs=1e-4)
        assert cal.line_scale[c] == pytest.approx(float(pooled.std(unbiased=False)) + 0.5, abs=1e-4)
    assert (cal.line_baseline[other], cal.line_scale[other]) == (0.0, 1.0)  # seen twice, not pooled
    assert cal.line_baseline[0] == pytest.approx(float(nll[classes == 0].mean()), abs=1e-4)
    assert len(cal.next_baseline) == len(vocab) + 2  # the next line's classes: vocabulary, other, end


def test_line_head_nll_covers_each_line_once(tokenizer) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = build_model(tiny_config(**LINE_VOCAB), tokenizer).eval()
    input_ids, attention_mask = batch(tokenizer)
    targets = torch.tensor([[0, 1, 2], [2, 1, 0], [0, 1, -100]])  # the third text has two lines
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention_mask, line_labels=targets)
    assert out.line_nll is not None and out.line_nll.shape == (3, 3)
    assert ((out.line_nll > 0) == (targets != -100)).all()
    assert out.line_loss is not None and out.loss is not None
    torch.testing.assert_close(out.line_loss, out.line_nll[targets != -100].mean())


def test_best_f1_threshold_and_risk_levels() -> None:
    thr, f1 = best_f1_threshold(np.array([0, 0, 1, 1]), np.array([0.1, 0.3, 0.6, 0.9]))
    assert f1 == 1.0 and 0.3 < thr < 0.6
    assert risk_level(0.9, 0.5) == "high"
    assert risk_level(0.7, 0.5) == "medium"
    assert risk_level(0.4, 0.5) == "low"
    assert risk_level(0.9, 0.95) == "low"
