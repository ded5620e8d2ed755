"""Deep-feature clustering: Birch on hand-made features, silhouette k, Hungarian accuracy, the pipeline end to end."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from core.errors import DataError, ModelError
from core.io import read_records
from data_gen import data_splitter, log_sequence_generator
from small_model.clusters.analysis import analyze, format_analysis
from small_model.clusters.birch import birch_cluster
from small_model.clusters.classifier import DualInputClassifier, pad_ids
from small_model.clusters.cli import add_commands
from small_model.clusters.config import BirchConfig, ClassifierConfig, ClusterConfig
from small_model.clusters.inputs import select_inputs
from small_model.clusters.matching import cluster_metrics, format_metrics, hungarian_accuracy, hungarian_mapping
from small_model.clusters.model import ClusterModel
from small_model.deeplog import DeepLogConfig, DeepLogDetector
from tests.fake_detector import FakeDetector

torch.set_num_threads(1)


def _blobs(
    centers: list[list[float]], per: int = 30, spread: float = 0.05, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(c, spread, size=(per, len(c))) for c in centers])
    y = np.repeat(np.arange(len(centers)), per)
    return x, y


# ----------------------------------------------------------------------------- stage 3 and metrics


@pytest.mark.parametrize("method", ["kmeans", "ward"])
def test_birch_recovers_separable_groups(method: str) -> None:
    from sklearn.metrics import adjusted_rand_score

    x, y = _blobs([[0, 0, 0], [3, 0, 0], [0, 3, 0], [0, 0, 3]])
    result = birch_cluster(x, BirchConfig(n_clusters=4, threshold=0.1, global_method=method))  # type: ignore[arg-type]
    assert result.n_clusters == 4
    assert adjusted_rand_score(y, result.labels) == pytest.approx(1.0)
    sizes = np.bincount(result.labels)
    assert list(sizes) == sorted(sizes, reverse=True)  # cluster 0 is the largest


def test_silhouette_picks_the_number_of_groups() -> None:
    x, _ = _blobs([[0, 0], [4, 0], [0, 4], [4, 4], [8, 8]], per=20)
    result = birch_cluster(x, BirchConfig(threshold=0.1, min_clusters=2, max_clusters=8))
    assert result.n_clusters == 5
    assert max(result.silhouette, key=lambda k: result.silhouette[k]) == 5


def test_birch_lowers_a_too_coarse_threshold() -> None:
    x, y = _blobs([[0, 0], [1, 0], [0, 1]], per=10, spread=0.01)
    result = birch_cluster(x, BirchConfig(n_clusters=3, threshold=5.0))
    assert result.threshold < 5.0
    assert hungarian_accuracy(y.tolist(), result.labels.tolist()) == 1.0


def test_hungarian_accuracy_on_a_hand_made_example() -> None:
    truth = ["a", "a", "a", "b", "b", "c", "c", "c"]
    pred = [1, 1, 0, 0, 0, 2, 2, 2]  # cluster 1 -> a, 0 -> b, 2 -> c; one 'a' lands in b's cluster
    assert hungarian_mapping(truth, pred) == {1: "a", 0: "b", 2: "c"}
    assert hungarian_accuracy(truth, pred) == pytest.approx(7 / 8)
    m = cluster_metrics(truth, pred)
    rows = {r["class"]: r for r in m["per_class"]}
    assert rows["a"]["precision"] == 1.0 and rows["a"]["recall"] == pytest.approx(2 / 3)
    assert rows["b"]["precision"] == pytest.approx(2 / 3) and rows["b"]["recall"] == 1.0
    assert rows["c"]["f1"] == 1.0 and rows["c"]["support"] == 3
    assert m["accuracy"] == pytest.approx(7 / 8)
    assert "| a | 1 | 1.000 | 0.667 |" in format_metrics(m)


def test_extra_clusters_count_as_errors() -> None:
    truth = ["a", "a", "b", "b"]
    pred = [0, 1, 2, 2]  # one of a's two clusters stays unmatched
    assert hungarian_accuracy(truth, pred) == 0.75
    assert cluster_metrics(truth, pred)["n_clusters"] == 3


def test_dual_input_classifier_shapes_and_losses() -> None:
    cfg = ClassifierConfig(vocab_size=7, num_classes=3, feature_dim=5, hidden_size=8, embedding_dim=4)
    model = DualInputClassifier(cfg)
    ids, lengths = pad_ids([[2, 3, 4], [5, 6]], cfg.max_len)
    assert ids.shape == (2, 3) and lengths.tolist() == [3, 2]
    out = model(ids, lengths, torch.randn(2, 5), torch.tensor([0, 2]))
    assert out.logits.shape == (2, 3) and out.next_logits.shape == (2, 3, 7) and out.projected.shape == (2, 5)
    assert out.loss is not None and out.parts is not None and set(out.parts) == {"next", "class", "consistency"}
    out.loss.backward()


# ----------------------------------------------------------------------------- the pipeline end to end


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """300 generated sequences, split, and a tiny DeepLog trained on the normal training part."""
    root = tmp_path_factory.mktemp("clusters")
    data = root / "seqs.json"
    assert log_sequence_generator.main(["--num-sequences", "300", "--seed", "7", "--output", str(data), "-q"]) == 0
    assert data_splitter.main(["--input", str(data), "--output-dir", str(root / "splits"), "-q"]) == 0
    normal = read_records(root / "splits" / "train_normal.json")
    detector = DeepLogDetector(DeepLogConfig(epochs=4, hidden_size=32, embedding_dim=16, num_layers=1, seed=1))
    detector.fit(normal, progress=False)
    det_dir = detector.save_pretrained(root / "deeplog")
    records = read_records(data)
    return {"root": root, "data": data, "normal": normal, "records": records, "detector": detector, "det_dir": det_dir}


def _config(**birch: Any) -> ClusterConfig:
    return ClusterConfig(
        mode="anomalies-only",
        birch=BirchConfig(**{"max_clusters": 8, "kmeans_init": 5, **birch}),
        classifier=ClassifierConfig(epochs=30, batch_size=16, hidden_size=16, embedding_dim=8),
    )


@pytest.fixture(scope="module")
def fitted(small_set: dict[str, Any]) -> ClusterModel:
    records = [r for r in small_set["records"] if r.label == 1]
    return ClusterModel.fit(
        small_set["detector"], records, small_set["normal"], _config(n_clusters=10), detector_path=small_set["det_dir"]
    )


def test_pipeline_runs_end_to_end(fitted: ClusterModel, small_set: dict[str, Any]) -> None:
    anomalies = [r for r in small_set["records"] if r.label == 1]
    labels = fitted.assignments["cluster"]
    assert len(labels) == len(anomalies) and fitted.n_clusters == 10
    assert fitted.normal_cluster is None  # anomalies only: no cluster is forced to be normal
    assert sum(c.size for c in fitted.clusters) == len(anomalies)
    for c in fitted.clusters:
        assert 1 <= len(c.samples) <= 5 and c.description and not c.is_normal
        assert c.purity is not None and 0 < c.purity <= 1
    acc = hungarian_accuracy([r.anomaly_type for r in anomalies], labels)
    assert acc > 0.5  # 10 types, ~9 each, tiny DeepLog: far above chance (0.1)
    assert fitted.classifier is not None and fitted.meta["classifier_train_agreement"] > 0.8
    assert fitted.train_features is not None
    blocks = fitted.featurizer.split(fitted.train_features)
    for name in ("structure", "vocabulary", "distance"):
        np.testing.assert_allclose(blocks[name], fitted.featurizer.last_blocks[name], atol=1e-5)
    predicted = fitted.predict([r.log_entries for r in anomalies[:4]])
    assert all(isinstance(c, int) and 0 <= c < 10 and isinstance(d, str) for c, d in predicted)


def test_largest_cluster_is_normal_when_normal_sequences_are_in(small_set: dict[str, Any]) -> None:
    cfg = _config()
    cfg.mode = "all"
    cfg.train_classifier = False
    model = ClusterModel.fit(small_set["detector"], small_set["records"][:150], small_set["normal"], cfg)
    assert model.normal_cluster == 0
    normal = next(c for c in model.clusters if c.cluster_id == 0)
    assert normal.is_normal and normal.description == "normal"
    assert normal.size == max(c.size for c in model.clusters)
    assert normal.majority == "normal"


def test_save_load_gives_identical_predictions(fitted: ClusterModel, small_set: dict[str, Any], tmp_path: Path) -> None:
    seqs = [r.log_entries for r in small_set["records"][:40]]
    before = fitted.predict_proba(seqs)
    out = fitted.save_pretrained(tmp_path / "model")
    for name in ("config.json", "model.safetensors", "cluster_state.safetensors", "clusters.json"):
        assert (out / name).exists()
    loaded = ClusterModel.from_pretrained(out)  # reloads the detector from the recorded path
    np.testing.assert_array_equal(loaded.predict_proba(seqs), before)
    assert loaded.predict(seqs) == fitted.predict(seqs)
    np.testing.assert_array_equal(loaded.predict_birch(seqs), fitted.predict_birch(seqs))
    assert loaded.version == fitted.version != "unsaved"


def test_analysis_names_real_sequences(fitted: ClusterModel, small_set: dict[str, Any]) -> None:
    ids = {r.sequence_id for r in small_set["records"]}
    report = analyze(fitted)
    assert report["n_sequences"] == len(fitted.assignments["cluster"])
    named = [s["sequence_id"] for c in report["clusters"] for s in c["samples"]]
    assert named and set(named) <= ids
    text = format_analysis(report)
    assert named[0] in text and "purity" in text and "accuracy (Hungarian)" in text
    fresh = analyze(fitted, small_set["records"][:30])  # predictions on a file
    assert {s["sequence_id"] for c in fresh["clusters"] for s in c["samples"]} <= {
        r.sequence_id for r in small_set["records"][:30]
    }


class _FlagEveryOther(FakeDetector):
    """A fake detector that flags every other sequence."""

    def rule(self, sequences: Sequence[Sequence[str]]) -> list[float]:
        return [float(i % 2) for i in range(len(sequences))]


def test_select_inputs_modes(small_set: dict[str, Any]) -> None:
    records = small_set["records"]
    detector = _FlagEveryOther()
    cluster, ref = select_inputs(records, "anomalies-only")
    assert all(r.label == 1 for r in cluster) and all(r.label == 0 for r in ref) and ref
    flagged, ref = select_inputs(records, "flagged-only", detector)
    assert flagged and all(r.label == 0 for r in ref)
    unlabeled = [r.model_copy(update={"label": None}) for r in records]
    flagged, quiet = select_inputs(unlabeled, "flagged-only", detector)
    assert len(flagged) == len(records) // 2 and len(flagged) + len(quiet) == len(records)
    everything, reference = select_inputs(unlabeled, "all", detector)
    assert len(everything) == len(records) and [r.sequence_id for r in reference] == [r.sequence_id for r in quiet]
    with pytest.raises(ModelError):
        select_inputs(unlabeled, "flagged-only")


def test_fit_rejects_empty_input(small_set: dict[str, Any]) -> None:
    normal_only = [r for r in small_set["records"] if r.label == 0][:10]
    with pytest.raises(DataError):
        ClusterModel.fit(small_set["detector"], normal_only, small_set["normal"], _config())


def test_cli_cluster_then_analyze(
    small_set: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    parsers = add_commands(parser.add_subparsers(dest="command"))
    assert set(parsers) == {"cluster", "analyze-clusters"}
    out = tmp_path / "clusters"
    args = parser.parse_args(
        ["cluster", "--data", str(small_set["data"]), "--detector", str(tmp_path / "dl"), "--train-detector",
         "--anomalies-only", "--n-clusters", "6", "--epochs", "2", "--output", str(out), "--json"]
    )  # fmt: skip
    assert args.handler(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_clusters"] == 6 and "metrics" in summary and (tmp_path / "dl" / "config.json").exists()
    args = parser.parse_args(["analyze-clusters", "--model", str(out), "--json"])
    assert args.handler(args) == 0
    report = json.loads(capsys.readouterr().out)
    ids = {r.sequence_id for r in small_set["records"]}
    assert {s["sequence_id"] for c in report["clusters"] for s in c["samples"]} <= ids
    assert Path(report["plot"]).exists() and Path(report["plot"]).stat().st_size > 1000
    args = parser.parse_args(["cluster", "--data", str(small_set["data"]), "--detector", str(tmp_path / "none")])
    with pytest.raises(ModelError):
        args.handler(args)


def test_cli_quick_profile_trains_a_short_deeplog_and_birch_alone(
    small_set: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`cluster --profile quick` (make demo's): the DeepLog it trains runs the profile's few epochs, no
    classifier is trained, and the artifact records the profile; an explicit flag wins over the profile."""
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    out, dl = tmp_path / "quick", tmp_path / "dl-quick"
    args = parser.parse_args(
        ["cluster", "--data", str(small_set["data"]), "--detector", str(dl), "--train-detector", "--anomalies-only",
         "--n-clusters", "4", "--profile", "quick", "--detector-epochs", "2", "--output", str(out), "--json"]
    )  # fmt: skip
    assert args.handler(args) == 0
    capsys.readouterr()
    assert json.loads((dl / "config.json").read_text())["config"]["epochs"] == 2  # the flag, not the profile's 5
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["profile"] == "quick" and config["config"]["train_classifier"] is False
    assert not (out / "model.safetensors").exists()
