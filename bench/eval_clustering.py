"""Deep-feature clustering of anomalies vs their true categories, for both feature extractors.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/eval_clustering.py

Prints, for DeepLog and MoE-BERT features: accuracy after Hungarian matching of clusters to
classes, NMI, ARI and per-class precision/recall/F1/support.

Synthetic data (hard): ``data/splits`` from the generator and the splitter (made here with the
generator defaults when missing). Detectors are trained on ``train_normal`` only; the cluster
models never see a label. Protocols:

- ``train -> test``: stages 2-4 fitted on the anomalies of the train split (k = number of types),
  the saved cluster model then predicts the anomalies of the test split (the headline figure);
- ``test, k=10``: the anomalies of the test split clustered on their own (Birch labels);
- ``test, k=auto``: the same with k chosen by silhouette in [2, 15];
- ablation: the test anomalies clustered on the detector's embedding and its distance to the
  normal mean alone (no structure or vocabulary block).

loghub BGL_2k: 10-line windows, the first 60% in time order train the detectors (normal windows
only); every window with an alert is clustered, its category being the most frequent alert in it.

Detectors: ``--deeplog`` / ``--moe`` artifact folders. Missing ones are trained here: DeepLog
(a minute), MoE-BERT as a small ``mini-scratch`` encoder (several minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

from core.io import read_records, write_records
from core.loghub import chronological_split, labelled_windows
from core.schema import SequenceRecord
from small_model.clusters.config import BirchConfig, ClassifierConfig, ClusterConfig, FeatureConfig
from small_model.clusters.features import load_feature_model
from small_model.clusters.matching import cluster_metrics, format_metrics
from small_model.clusters.model import ClusterModel

log = logging.getLogger("eval_clustering")
SPLITS = Path("data/splits")
BGL = Path(os.environ.get("LOGTRIAGE_LOGHUB", "/work/shared/datasets/loghub")) / "BGL" / "BGL_2k.log"
WORK = Path("artifacts/clustering")
MOE_CANDIDATES = ("artifacts/detector-unsup", "artifacts/detector", "artifacts/clustering/moe-mini")
DEEPLOG_CANDIDATES = ("artifacts/deeplog", "artifacts/detector-deeplog", "artifacts/clustering/deeplog-hard")
MOE_SMALL: dict[str, Any] = {
    "encoder": "mini-scratch",
    "epochs": 0.5,
    "mlm_epochs": 1.0,
}


def ensure_splits() -> None:
    """Generate the hard synthetic data and its splits when they are missing."""
    if all((SPLITS / f"{n}.json").exists() for n in ("train", "test", "train_normal")):
        return
    from data_gen import data_splitter, log_sequence_generator

    log.info("generating data/log_sequences_strings.json (hard) and data/splits")
    log_sequence_generator.main(["--difficulty", "hard", "-q"])
    data_splitter.main(["--input", "data/log_sequences_strings.json", "-q"])


def train_deeplog(normal: list[SequenceRecord], out: Path) -> Path:
    """A DeepLog detector on normal sequences."""
    from small_model.deeplog import DeepLogDetector

    log.info("training DeepLog on %d normal sequences -> %s", len(normal), out)
    return DeepLogDetector().fit(normal, progress=False).save_pretrained(out)


def train_moe(train_file: Path, out: Path, val_file: Path | None = None) -> Path:
    """A small label-free MoE-BERT detector (mini-scratch encoder) on the normal sequences of a file."""
    from small_model.moe_train import TrainArgs, train_detector

    log.info("training a small MoE-BERT (mini-scratch) on %s -> %s", train_file, out)
    args = TrainArgs(
        train_file=train_file,
        val_file=val_file,
        output_dir=out,
        unsupervised=True,
        progress=False,
        threads=1,
        **MOE_SMALL,
    )
    return train_detector(args)


def pick(explicit: str | None, candidates: tuple[str, ...]) -> Path | None:
    """The explicit folder, else the first existing candidate."""
    if explicit:
        return Path(explicit)
    return next((Path(c) for c in candidates if Path(c).is_dir()), None)


def config(n_clusters: int | None, epochs: int = 40) -> ClusterConfig:
    """The cluster pipeline as evaluated: anomalies only, defaults otherwise."""
    return ClusterConfig(
        mode="anomalies-only",
        birch=BirchConfig(n_clusters=n_clusters),
        classifier=ClassifierConfig(epochs=epochs),
        train_classifier=epochs > 0,
    )


def evaluate_synthetic(name: str, detector: Any, det_path: Path, rows: list[dict[str, Any]], tables: list[str]) -> None:
    """The three synthetic protocols for one feature extractor."""
    normal = read_records(SPLITS / "train_normal.json")
    train = [r for r in read_records(SPLITS / "train.json") if r.label == 1]
    test = [r for r in read_records(SPLITS / "test.json") if r.label == 1]
    k = len({r.anomaly_type for r in train})
    truth = [str(r.anomaly_type) for r in test]

    t0 = time.perf_counter()
    model = ClusterModel.fit(detector, train, normal, config(k), detector_path=det_path)
    folder = model.save_pretrained(WORK / f"clusters-{name}-synthetic")
    fit_s = time.perf_counter() - t0
    train_m = cluster_metrics([str(r.anomaly_type) for r in train], model.assignments["cluster"])
    rows.append({"data": "synthetic hard", "features": name, "protocol": "train (Birch labels)", "k": k, **train_m})
    loaded = ClusterModel.from_pretrained(folder, detector=detector)
    pred = loaded.predict_ids([r.log_entries for r in test])
    m = cluster_metrics(truth, pred.tolist())
    rows.append({"data": "synthetic hard", "features": name, "protocol": "train -> test (classifier)", "k": k, **m})
    tables.append(format_metrics(m, f"{name}: synthetic hard, cluster model fitted on train anomalies, test anomalies"))
    birch_pred = loaded.predict_birch([r.log_entries for r in test])
    mb = cluster_metrics(truth, birch_pred.tolist())
    rows.append({"data": "synthetic hard", "features": name, "protocol": "train -> test (nearest Birch)", "k": k, **mb})
    log.info("%s: fit on %d train anomalies in %.0f s", name, len(train), fit_s)

    alone = ClusterModel.fit(detector, test, normal, config(k, epochs=0))
    ma = cluster_metrics(truth, alone.assignments["cluster"])
    rows.append({"data": "synthetic hard", "features": name, "protocol": "test alone", "k": k, **ma})
    tables.append(format_metrics(ma, f"{name}: synthetic hard, test anomalies clustered on their own (k={k})"))
    auto = ClusterModel.fit(detector, test, normal, config(None, epochs=0))
    mu = cluster_metrics(truth, auto.assignments["cluster"])
    rows.append(
        {
            "data": "synthetic hard",
            "features": name,
            "protocol": "test alone, k by silhouette",
            "k": auto.n_clusters,
            **mu,
        }
    )
    plain = config(k, epochs=0)  # ablation: the embedding and its distance only, as in the original method
    plain.features = FeatureConfig(deep_weight=1.0, distance_weight=1.0, structure_weight=0.0, vocabulary_weight=0.0)
    mp = cluster_metrics(truth, ClusterModel.fit(detector, test, normal, plain).assignments["cluster"])
    rows.append(
        {"data": "synthetic hard", "features": name, "protocol": "test alone, embedding + distance only", "k": k, **mp}
    )


def bgl_data(workdir: Path) -> tuple[list[SequenceRecord], list[SequenceRecord], Path]:
    """(normal training windows, all alert windows, the normal windows as a file)."""
    windows = list(labelled_windows(BGL, size=10))
    train, _ = chronological_split(windows, 0.6, normal_only_train=True)
    alerts = [w for w in windows if w.label == 1]
    path = workdir / "bgl_train_normal.json"
    workdir.mkdir(parents=True, exist_ok=True)
    write_records(path, train)
    return train, alerts, path


def evaluate_bgl(
    name: str,
    detector: Any,
    normal: list[SequenceRecord],
    alerts: list[SequenceRecord],
    rows: list[dict[str, Any]],
    tables: list[str],
) -> None:
    """Cluster the BGL_2k alert windows; compare with their alert categories."""
    truth = [str(r.anomaly_type) for r in alerts]
    k = len(set(truth))
    model = ClusterModel.fit(detector, alerts, normal, config(k, epochs=0))
    m = cluster_metrics(truth, model.assignments["cluster"])
    rows.append({"data": "BGL_2k alerts", "features": name, "protocol": "all alert windows", "k": k, **m})
    tables.append(format_metrics(m, f"{name}: loghub BGL_2k alert windows (k={k})"))
    auto = ClusterModel.fit(detector, alerts, normal, config(None, epochs=0))
    mu = cluster_metrics(truth, auto.assignments["cluster"])
    rows.append({"data": "BGL_2k alerts", "features": name, "protocol": "k by silhouette", "k": auto.n_clusters, **mu})


def summary_table(rows: list[dict[str, Any]]) -> str:
    """One line per (data, features, protocol)."""
    head = "| data | features | protocol | k | n | accuracy | NMI | ARI | macro F1 |"
    out = [head, "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(
            f"| {r['data']} | {r['features']} | {r['protocol']} | {r['k']} | {r['n']} | {r['accuracy']:.3f} | "
            f"{r['nmi']:.3f} | {r['ari']:.3f} | {r['macro_f1']:.3f} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Run every evaluation and print the tables."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--deeplog", help="DeepLog detector folder (synthetic); default: first of " + ", ".join(DEEPLOG_CANDIDATES)
    )
    p.add_argument("--moe", help="MoE-BERT detector folder (synthetic); default: first of " + ", ".join(MOE_CANDIDATES))
    p.add_argument("--skip-moe", action="store_true", help="DeepLog features only")
    p.add_argument("--skip-bgl", action="store_true")
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    assert os.environ.get("OMP_WAIT_POLICY") == "PASSIVE"
    ensure_splits()
    rows: list[dict[str, Any]] = []
    tables: list[str] = []
    started = time.perf_counter()

    extractors: list[tuple[str, Path]] = []
    deeplog = pick(args.deeplog, DEEPLOG_CANDIDATES) or train_deeplog(
        read_records(SPLITS / "train_normal.json"), WORK / "deeplog-hard"
    )
    extractors.append(("deeplog", deeplog))
    if not args.skip_moe:
        moe = pick(args.moe, MOE_CANDIDATES) or train_moe(
            SPLITS / "train_normal.json", WORK / "moe-mini", SPLITS / "val.json"
        )
        extractors.append(("moe-bert", moe))
    for name, path in extractors:
        log.info("synthetic: %s features from %s", name, path)
        evaluate_synthetic(name, load_feature_model(path, name), path, rows, tables)

    if not args.skip_bgl and BGL.exists():
        bgl_dir = WORK / "bgl"
        normal, alerts, normal_file = bgl_data(bgl_dir)
        bgl_extractors: list[tuple[str, Path]] = [
            (
                "deeplog",
                bgl_dir / "deeplog" if (bgl_dir / "deeplog").is_dir() else train_deeplog(normal, bgl_dir / "deeplog"),
            )
        ]
        if not args.skip_moe:
            moe_dir = bgl_dir / "moe-mini"
            bgl_extractors.append(("moe-bert", moe_dir if moe_dir.is_dir() else train_moe(normal_file, moe_dir)))
        for name, path in bgl_extractors:
            log.info("BGL_2k: %s features from %s", name, path)
            evaluate_bgl(name, load_feature_model(path, name), normal, alerts, rows, tables)

    print("\n## Clustering of anomalies vs true categories (accuracy after Hungarian matching)\n")
    print(summary_table(rows))
    for t in tables:
        print("\n" + t)
    print(f"\n(total {time.perf_counter() - started:.0f} s; detectors: {', '.join(f'{n}={p}' for n, p in extractors)})")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows}, indent=2, default=str), encoding="utf-8")
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    sys.exit(main())
