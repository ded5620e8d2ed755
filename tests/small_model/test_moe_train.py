"""Training end to end on a small generated set (tiny random BERT): label-free, supervised, bad data."""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from core.errors import DataError
from small_model.cli import add_train_arguments, moe_train_args
from small_model.moe_train import TrainArgs, detector_config, train_detector
from small_model.scoring import MoEBertDetector

torch.set_num_threads(1)

TINY: dict[str, Any] = {
    "scratch_layers": 2,
    "scratch_hidden": 48,
    "scratch_heads": 2,
    "scratch_intermediate": 96,
    "seq_heads": 2,
    "seq_intermediate": 96,
    "expert_hidden": 48,
    "head_hidden": 16,
    "precision": "fp32",
}
FLOWS = {
    "order": ["validating cart for user {u}", "reserving {n} items in warehouse {w}", "charging card ending {c}",
              "order {o} created"],
    "payment": ["opening transaction {o}", "authorizing amount {a} EUR", "capturing funds from account {c}",
                "transaction {o} committed"],
    "auth": ["checking token for user {u}", "loading profile of user {u}", "issuing session {o}",
             "login succeeded for user {u}"],
    "search": ["parsing query of {n} terms", "querying shard {w}", "merging {n} partial results",
               "returning {n} hits"],
}  # fmt: skip
ERRORS = ["ERROR database connection pool exhausted after {n} retries", "ERROR upstream returned 503",
          "FATAL out of memory while allocating {n} MB", "ERROR certificate expired for host {w}"]  # fmt: skip


def _fill(template: str, rng: random.Random) -> str:
    return template.format(
        u=rng.choice(["alice", "bob", "carol", "dave"]), n=rng.randint(1, 99), w=f"wh-{rng.randint(1, 9)}",
        c=rng.randint(1000, 9999), o=f"ord-{rng.randint(10000, 99999)}", a=f"{rng.uniform(1, 500):.2f}",
    )  # fmt: skip


BENIGN = ["INFO gc pause young generation", "INFO metrics flushed to collector", "INFO config reloaded",
          "WARN slow consumer lag high", "INFO health check passed", "INFO cache hit ratio reported"]  # fmt: skip


def normal_lines(rng: random.Random) -> list[str]:
    service = rng.choice(list(FLOWS))
    ip = f"10.0.{rng.randint(0, 9)}.{rng.randint(1, 250)}"
    lines = [f"2024-05-01 10:00:00 INFO {service}-service request from {ip}"]
    for step in FLOWS[service]:
        lines.append(f"2024-05-01 10:00:01 INFO {service}-service {_fill(step, rng)} took {rng.randint(5, 90)} ms")
        if rng.random() < 0.15:  # background lines make normal sequences varied
            lines.append(f"2024-05-01 10:00:01 {rng.choice(BENIGN)}")
    lines.append(f"2024-05-01 10:00:02 INFO {service}-service response 200 in {rng.randint(100, 400)} ms")
    return lines


def anomalous_lines(rng: random.Random) -> tuple[list[str], str, int]:
    """An anomalous sequence, its type and the index of the line that makes it anomalous."""
    lines = normal_lines(rng)
    kind = rng.choice(["error", "latency", "error"])
    if kind == "error":
        at = rng.randint(2, len(lines) - 1)
        lines.insert(at, "2024-05-01 10:00:01 " + _fill(rng.choice(ERRORS), rng))
    else:
        at = rng.choice([i for i, line in enumerate(lines) if " took " in line])
        lines[at] = lines[at].rsplit(" took ", 1)[0] + f" took {rng.randint(20000, 90000)} ms"
    return lines, kind, at


def records(n: int, anomaly_rate: float, seed: int, prefix: str) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if rng.random() < anomaly_rate:
            lines, kind, _ = anomalous_lines(rng)
            out.append({"sequence_id": f"{prefix}{i}", "label": 1, "log_entries": lines, "anomaly_type": kind})
        else:
            out.append({"sequence_id": f"{prefix}{i}", "label": 0, "log_entries": normal_lines(rng)})
    return out


def write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def tiny_args(tmp: Path, **overrides: Any) -> TrainArgs:
    base: dict[str, Any] = dict(
        train_file=tmp / "train.json", output_dir=tmp / "artifact", encoder="mini-scratch", threads=1,
        progress=False, batch_size=16, epochs=1.0, mlm_epochs=4.0, lr=2e-3, seq_hidden=48, min_steps=1,
        **TINY,
    )  # fmt: skip
    base.update(overrides)
    return TrainArgs(**base)


@pytest.fixture(scope="module")
def label_free_artifact(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    tmp = tmp_path_factory.mktemp("unsup")
    write(tmp / "train.json", records(320, 0.0, 1, "tr"))
    write(tmp / "val.json", records(120, 0.25, 2, "va"))
    test = records(160, 0.25, 3, "te")
    write(tmp / "test.json", test)
    args = tiny_args(tmp, val_file=tmp / "val.json", test_file=tmp / "test.json", unsupervised=True)
    return train_detector(args), test


def test_label_free_ranks_injected_anomalies_above_normal(label_free_artifact) -> None:  # type: ignore[no-untyped-def]
    path, test = label_free_artifact
    for name in ("config.json", "model.safetensors", "tokenizer.json", "normalizer.json", "calibration.json",
                 "embedding_bank.safetensors", "metrics.json"):  # fmt: skip
        assert (path / name).exists(), name
    detector = MoEBertDetector.from_pretrained(path)
    assert detector.mode == "unsupervised"
    weights = detector.calibration.weights
    assert set(weights) == {"head", "knn", "lines", "next"} and sum(weights.values()) == pytest.approx(1.0)
    scores = detector.score([r["log_entries"] for r in test])
    labels = np.array([r["label"] for r in test])
    assert ((scores >= 0) & (scores <= 1)).all()
    assert roc_auc_score(labels, scores) > 0.9
    # the artifact's recorded metrics agree with a fresh load
    metrics = json.loads((path / "metrics.json").read_text())
    assert metrics["test"]["roc_auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
    assert metrics["mode"] == "unsupervised" and metrics["seconds"]["train_total"] > 0
    assert len(metrics["expert_usage"]["dispatch_share"]) == 4
    assert set(metrics["history"]) == {"lines-stage1-dense", "lines-stage2-topp", "oneclass-head"}
    # scores are reproducible (deterministic masking for the reconstruction score)
    np.testing.assert_array_equal(scores, detector.score([r["log_entries"] for r in test]))


def test_label_free_line_contributions_point_at_the_injected_line(label_free_artifact) -> None:  # type: ignore[no-untyped-def]
    path, _ = label_free_artifact
    detector = MoEBertDetector.from_pretrained(path)
    rng = random.Random(7)
    hits = 0
    for _ in range(6):
        lines = normal_lines(rng)
        at = rng.randint(2, len(lines) - 1)
        lines.insert(at, "2024-05-01 10:00:01 FATAL out of memory while allocating 512 MB")
        contributions = detector.line_contributions(lines)
        assert len(contributions) == len(lines)
        hits += int(np.argmax(contributions) == at)
    assert hits >= 4


def test_score_with_lines_gives_the_score_and_the_top_lines_in_one_pass(label_free_artifact) -> None:  # type: ignore[no-untyped-def]
    """The served path: the fused score and every line's contribution from the same passes, equal to
    ``score`` and to ``line_contributions`` run on their own (a line the normalizer empties counts 0)."""
    path, test = label_free_artifact
    detector = MoEBertDetector.from_pretrained(path)
    sequences = [r["log_entries"] for r in test[:20]]
    sequences[3] = [*sequences[3][:2], "2024-05-01 10:00:01", *sequences[3][2:]]  # a line that normalizes to nothing
    scores, lines = detector.score_with_lines(sequences)
    np.testing.assert_allclose(scores, detector.score(sequences), rtol=0, atol=1e-9)
    assert lines is not None and [len(x) for x in lines] == [len(s) for s in sequences]
    assert lines[3][2] == 0.0
    many = detector.line_contributions_many(sequences)  # the flagged ones of a batch, in one pass
    for seq, contributions, together in zip(sequences, lines, many, strict=True):
        alone = detector.line_contributions(seq)
        np.testing.assert_allclose(contributions, alone, rtol=0, atol=2e-3)
        np.testing.assert_allclose(together, alone, rtol=0, atol=2e-3)
    assert detector.line_contributions_many([]) == []
    assert detector.line_contributions_many([["2024-05-01 10:00:01"]]) == [[0.0]]  # nothing left to score
    empty_scores, empty_lines = detector.score_with_lines([])
    assert len(empty_scores) == 0 and empty_lines == []


async def test_the_service_takes_top_lines_from_the_scoring_passes(label_free_artifact) -> None:  # type: ignore[no-untyped-def]
    from api.metrics import Metrics
    from api.services import DetectorService
    from core.settings import Settings

    path, test = label_free_artifact
    detector = MoEBertDetector.from_pretrained(path)
    service = DetectorService(detector, Settings(batching=False), Metrics())
    sequences = [r["log_entries"] for r in test if r["label"] == 1][:6]
    verdicts = await service.detect(sequences)
    flagged = [(v, s) for v, s in zip(verdicts, sequences, strict=True) if v.is_anomaly]
    assert flagged
    for verdict, lines in flagged:
        alone = detector.line_contributions(lines)
        assert verdict.top_lines is not None
        assert [t["index"] for t in verdict.top_lines] == sorted(range(len(lines)), key=lambda i: -alone[i])[:3]


def test_the_device_setting_loads_the_detector_where_asked(label_free_artifact) -> None:  # type: ignore[no-untyped-def]
    """``auto`` is the CPU on a machine without CUDA, with the very scores of ``cpu``; CUDA asked for without a
    GPU, or a device name that is none, is a one-line ModelError (the GPU is checked with bench/bench_detect.py)."""
    from core.errors import ModelError
    from small_model.registry import load_detector

    path, test = label_free_artifact
    lines = [r["log_entries"] for r in test[:24]]
    on_cpu = load_detector(path, device="cpu")
    assert isinstance(on_cpu, MoEBertDetector)  # what the registry loads is typed as any Detector
    assert on_cpu.device.type == "cpu" and on_cpu.vectors.table.device.type == "cpu"
    if not torch.cuda.is_available():
        auto = load_detector(path, device="auto")
        assert isinstance(auto, MoEBertDetector) and auto.device.type == "cpu"
        np.testing.assert_array_equal(auto.score(lines), on_cpu.score(lines))
        with pytest.raises(ModelError, match="no CUDA GPU"):
            load_detector(path, device="cuda")
    with pytest.raises(ModelError, match="unknown device 'tpu'"):
        load_detector(path, device="tpu")
    # a GPU's host normalizes on several processes: the same scores
    from core.normalize import NormalizerPool

    pooled = load_detector(path, device="cpu")
    assert isinstance(pooled, MoEBertDetector)
    pooled.normalize_workers, pooled._pool = 2, NormalizerPool(pooled.normalizer, 2, min_chunk=32)
    try:
        np.testing.assert_array_equal(pooled.score(lines), on_cpu.score(lines))
        assert pooled._pool._pool is not None
    finally:
        pooled._pool.close()


def test_supervised_training_separates_the_classes(tmp_path: Path) -> None:
    write(tmp_path / "train.json", records(320, 0.3, 4, "tr"))
    write(tmp_path / "val.json", records(100, 0.3, 5, "va"))
    test = records(120, 0.3, 6, "te")
    path = train_detector(tiny_args(tmp_path, val_file=tmp_path / "val.json", epochs=20.0, mlm_epochs=1.0, lr=2e-3))
    detector = MoEBertDetector.from_pretrained(path)
    assert detector.mode == "supervised" and detector.calibration.threshold_source == "validation"
    scores = detector.score([r["log_entries"] for r in test])
    labels = np.array([r["label"] for r in test])
    assert roc_auc_score(labels, scores) > 0.95
    predictions = detector.predict([r["log_entries"] for r in test])
    flagged = np.array([p.is_anomaly for p in predictions])
    assert (flagged == labels).mean() > 0.9
    assert {p.risk for p in predictions} <= {"high", "medium", "low"}


def _fails_before_training(tmp_path: Path, rows: list[dict[str, Any]] | str, match: str, **kw: Any) -> None:
    train = tmp_path / "train.json"
    if isinstance(rows, str):
        train.write_text(rows)
    else:
        write(train, rows)
    with pytest.raises(DataError, match=match):
        train_detector(tiny_args(tmp_path, **kw))
    assert not (tmp_path / "artifact").exists()


def test_bad_data_fails_with_a_clear_message_before_training(tmp_path: Path) -> None:
    _fails_before_training(tmp_path, "[]", "no records")
    _fails_before_training(tmp_path, "", "empty")
    anomalies = [r for r in records(60, 0.5, 8, "x") if r["label"] == 1]
    _fails_before_training(tmp_path, anomalies, "all are anomalies", unsupervised=True)
    normals = records(10, 0.0, 9, "n")
    _fails_before_training(tmp_path, normals, "both classes.*--unsupervised")
    unlabeled = [{k: v for k, v in r.items() if k != "label"} for r in normals]
    _fails_before_training(tmp_path, unlabeled, "no labels")
    mixed = records(20, 0.5, 10, "m")
    _fails_before_training(tmp_path, mixed, "no such file", val_file=tmp_path / "missing.json")


def parse_args(argv: list[str]) -> TrainArgs:
    """``logtriage train-small``'s flags as its handler reads them."""
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    return moe_train_args(parser.parse_args(argv))


def test_cli_flags_map_onto_train_args() -> None:
    args = parse_args(["--train", "t.json", "--out", "o", "--unsupervised", "--epochs", "2", "--max-lines", "64"])
    assert args.unsupervised and args.epochs == 2.0 and args.max_lines == 64
    assert args.train_file == Path("t.json") and args.output_dir == Path("o")
    assert args.head_epochs == 2.0
    defaults = parse_args(["--train", "t.json", "--mask-probability", "0.4", "--top-p", "0.6"])
    assert defaults.epochs is None and defaults.head_epochs == 1.0  # supervised default
    assert parse_args(["--train", "t.json", "--unsupervised"]).head_epochs == 0.5  # label-free default
    config = detector_config(defaults)
    assert config.mask_probability == 0.4 and config.top_p == 0.6
    assert defaults.steps(10.0, 32) == defaults.min_steps and defaults.steps(1e6, 10**6) == defaults.max_steps
    # every option of the detector's config and of the run is a flag; the defaults are the dataclass's
    every = parse_args(["--train", "t.json", "--seq-heads", "8", "--no-add-placeholder-tokens", "--augment", "0.5",
                        "--device", "cpu", "--calib-fraction", "0.2"])  # fmt: skip
    assert every.seq_heads == 8 and not every.add_placeholder_tokens and every.augment == 0.5
    assert detector_config(every).seq_heads == 8 and every.calib_fraction == 0.2
    assert parse_args(["--train", "t.json"]) == TrainArgs(
        train_file=Path("t.json"), output_dir=Path("artifacts/detector")
    )
    with pytest.raises(DataError, match="--top-g: not an option of --model moe-bert"):
        parse_args(["--train", "t.json", "--top-g", "3"])


def swapped_lines(rng: random.Random) -> list[str]:
    """A normal flow with two neighbouring steps in the wrong order (every line is a normal line)."""
    lines = [line for line in normal_lines(rng) if not any(b in line for b in BENIGN)]
    at = rng.randint(1, len(lines) - 3)  # two steps of the flow, between the request and the response
    lines[at], lines[at + 1] = lines[at + 1], lines[at]
    return lines


def test_forward_line_modeling_ranks_steps_out_of_order(tmp_path: Path) -> None:
    """Each line's next line predicted from the lines before it (causal attention): two steps of
    a flow swapped score above normal flows, though every line of them is a normal line."""
    write(tmp_path / "train.json", records(320, 0.0, 1, "tr"))
    path = train_detector(tiny_args(tmp_path, unsupervised=True, mlm_epochs=12.0, epochs=0.1))
    detector = MoEBertDetector.from_pretrained(path)
    assert detector.calibration.next_baseline
    rng = random.Random(11)
    raw = detector.raw_scores([normal_lines(rng) for _ in range(60)] + [swapped_lines(rng) for _ in range(60)])
    labels = np.r_[np.zeros(60), np.ones(60)]
    assert roc_auc_score(labels, raw["next"]) > 0.85  # 0.94 when written
    np.testing.assert_array_equal(raw["recon"], np.maximum(raw["lines"], raw["next"]))


def test_quick_profile_sets_its_budgets_where_no_flag_does() -> None:
    quick = parse_args(["--train", "t.json", "--profile", "quick"])
    assert quick.profile == "quick" and (quick.max_steps, quick.min_steps) == (80, 1)
    assert parse_args(["--train", "t.json", "--profile", "quick", "--max-steps", "7"]).max_steps == 7  # the flag wins
    full = parse_args(["--train", "t.json"])
    assert full.profile == "full" and full.max_steps == TrainArgs(train_file=Path("t.json")).max_steps
    with pytest.raises(DataError, match="unknown profile"):
        TrainArgs.for_profile("fast", train_file=Path("t.json"))


def test_a_quick_artifact_says_so_in_its_config_and_version(tmp_path: Path) -> None:
    write(tmp_path / "train.json", records(48, 0.5, 11, "q"))
    args = tiny_args(tmp_path, max_steps=2, profile="quick")
    out = train_detector(args)
    config = json.loads((out / "config.json").read_text())
    assert config["profile"] == "quick" and config["version"].startswith("moebert-quick-")
    steps = json.loads((out / "metrics.json").read_text())["history"]
    assert all(phase["steps"] <= 2 for phase in steps.values() if "steps" in phase)
    detector = MoEBertDetector.from_pretrained(out)
    assert detector.profile == "quick" and detector.version == config["version"]
    from api.metrics import Metrics
    from api.services import DetectorService
    from core.settings import Settings

    assert DetectorService(detector, Settings(batching=False), Metrics()).profile == "quick"  # what /ready shows
