"""The category classifier beside the LLM: fitted, saved and loaded; fused with the label scores at a weight
chosen on held-out records; absent or broken folders."""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from core.errors import ModelError
from large_model.answer import FUSION_WEIGHTS, choose_category, choose_fusion_weight
from large_model.calibration import split_known
from large_model.category_classifier import (
    CLASSIFIER_FILE,
    CategoryClassifier,
    analyze,
    fit_category_classifier,
    prepare_text,
)
from large_model.encoding import Example, load_examples
from large_model.inference import Explainer
from large_model.train import TrainResult
from logtriage.cli import main
from tests.large_model.conftest import TOY_LABELS


def _sklearn_log_proba(train: list[Example], rows: list[Example], classifier: CategoryClassifier) -> np.ndarray:
    """scikit-learn's own TF-IDF + logistic regression with the classifier's settings, on the same texts."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    settings = classifier.settings
    vectorizer = TfidfVectorizer(analyzer=lambda t: analyze(t, settings), min_df=settings.min_df, sublinear_tf=True)
    texts = [prepare_text(e.log_entries or [], e.lang, settings) for e in train]
    regression = LogisticRegression(C=settings.c, max_iter=settings.max_iter)
    regression.fit(vectorizer.fit_transform(texts), [e.category for e in train])
    assert list(regression.classes_) == list(classifier.classes)
    held = vectorizer.transform([prepare_text(e.log_entries or [], e.lang, settings) for e in rows])
    return np.asarray(regression.predict_log_proba(held))


def test_classifier_gives_scikit_learns_probabilities_and_the_same_after_a_reload(
    toy_split: tuple[list[Example], list[Example]], tmp_path: Path
) -> None:
    train, held = toy_split
    for name, rows in (("all", train), ("two", [e for e in train if e.category != "timeout"])):
        classifier = fit_category_classifier(rows)
        assert classifier is not None and classifier.train_records == len(rows)
        want = _sklearn_log_proba(rows, held, classifier)
        got = np.array([list(classifier.log_proba(e.log_entries or [], e.lang).values()) for e in held])
        np.testing.assert_allclose(got, want, atol=1e-4)  # the arrays are kept as float32
        back = CategoryClassifier.load(classifier.save(tmp_path / f"{name}-{CLASSIFIER_FILE}"))
        assert back.classes == classifier.classes and back.settings == classifier.settings
        for e in held:
            assert back.log_proba(e.log_entries or [], e.lang) == classifier.log_proba(e.log_entries or [], e.lang)
    # the two-class case: scikit-learn's single row made a softmax
    assert classifier is not None and len(classifier.classes) == 2
    lp = classifier.category_log_probs(TOY_LABELS.categories, held[0].log_entries or [])
    assert lp[TOY_LABELS.categories.index("timeout")] == pytest.approx(math.log(1e-6))  # never trained on
    assert fit_category_classifier([e for e in train if e.category == "timeout"]) is None  # one class: none


def test_weight_zero_is_the_llm_alone_and_one_the_classifier_alone() -> None:
    rng = random.Random(0)
    cats = ("a", "b", "c", "d")
    for _ in range(200):
        scores = [rng.uniform(-40, 0) for _ in cats]
        logits = [rng.uniform(-5, 5) for _ in cats]
        classifier = [v - math.log(sum(math.exp(x) for x in logits)) for v in logits]
        for threshold in (None, 0.5, 0.9):
            assert choose_category(cats, scores, threshold, classifier, 0.0) == choose_category(cats, scores, threshold)
        category, confidence = choose_category(cats, scores, None, classifier, 1.0)
        assert category == cats[int(np.argmax(classifier))]
        assert confidence == pytest.approx(math.exp(max(classifier)))


def test_the_fusion_weight_is_the_smallest_of_the_best_on_its_records() -> None:
    cats = ("a", "b")
    # the LLM prefers the wrong label by 1 nat, the classifier the right one by log(19): right from a > 0.2535
    llm, classifier = [[0.0, -1.0]] * 4, [[math.log(0.05), math.log(0.95)]] * 4
    weight, accuracy = choose_fusion_weight(cats, ["b"] * 4, llm, classifier)
    assert weight == 0.3 and list(accuracy) == [f"{w:g}" for w in FUSION_WEIGHTS]
    assert [accuracy[k] for k in ("0", "0.2", "0.3", "1")] == [0.0, 0.0, 1.0, 1.0]
    # where both are right at every weight, the LLM is trusted (weight 0)
    assert choose_fusion_weight(cats, ["a"] * 4, llm, [[math.log(0.9), math.log(0.1)]] * 4)[0] == 0.0
    with pytest.raises(ModelError):
        choose_fusion_weight(cats, [], [], [])


def test_weight_and_threshold_use_disjoint_held_out_records() -> None:
    known = [Example(f"s{i}", [], "{}", "a", "low") for i in range(30)]
    picking, calibrating = split_known(known, 40, 12, seed=3)
    assert len(picking) == 15 and len(calibrating) == 12  # at most half choose the weight
    assert not {e.sequence_id for e in picking} & {e.sequence_id for e in calibrating}
    assert split_known(known, 40, 12, seed=3) == (picking, calibrating)
    assert split_known(known, 0, 100, seed=3)[0] == [] and len(split_known(known, 0, 100, seed=3)[1]) == 30


def test_training_fits_the_classifier_and_reports_accuracy_on_records_that_chose_nothing(
    trained: TrainResult, toy_data: Path
) -> None:
    folder = trained.output
    meta = json.loads((folder / "explainer.json").read_text(encoding="utf-8"))
    calibration = meta["calibration"]
    assert (folder / CLASSIFIER_FILE).is_file() and meta["category_classifier"]["file"] == CLASSIFIER_FILE
    assert meta["fusion_weight"] == calibration["fusion_weight"] and meta["fusion_weight"] in FUSION_WEIGHTS
    assert trained.metrics["calibration"] == calibration
    held = load_examples(folder / "heldout.jsonl", TOY_LABELS)
    args = trained.metrics["args"]
    picking, calibrating = split_known(held, args["fusion_examples"], args["calibrate_examples"], args["seed"])
    assert calibration["fusion_examples"] == len(picking) > 0 and calibration["examples"] == len(calibrating) > 0
    assert not {e.sequence_id for e in picking} & {e.sequence_id for e in calibrating}
    # the figures reported are what the loaded explainer does on the calibrating records alone
    explainer = Explainer.from_pretrained(folder, device="cpu", dtype="fp32")
    assert explainer.classifier is not None and explainer.fusion_weight == meta["fusion_weight"]
    explainer.category_threshold = None
    chosen = [explainer.explain_detailed(e.log_entries or [], e.lang, generate=False) for e in calibrating]
    right = sum(x.explanation.category == e.category for x, e in zip(chosen, calibrating, strict=True))
    assert calibration["known_accuracy"] == right / len(calibrating)
    assert calibration["classifier_accuracy"] is not None and calibration["llm_accuracy"] is not None
    assert min(x.explanation.confidence or 0.0 for x in chosen) == pytest.approx(calibration["category_threshold"])
    assert set(chosen[0].extra["classifier_scores"]) == set(TOY_LABELS.categories)


def _copy(folder: Path, to: Path, **meta_update: object) -> Path:
    shutil.copytree(folder, to, ignore=shutil.ignore_patterns("checkpoints"))
    meta = json.loads((to / "explainer.json").read_text(encoding="utf-8"))
    meta.update(meta_update)
    (to / "explainer.json").write_text(json.dumps(meta), encoding="utf-8")
    return to


def test_a_folder_without_the_classifier_explains_as_the_llm_alone(
    trained: TrainResult, toy_split: tuple[list[Example], list[Example]], tmp_path: Path
) -> None:
    plain = _copy(trained.output, tmp_path / "plain", fusion_weight=None, category_classifier=None)
    (plain / CLASSIFIER_FILE).unlink()
    without = Explainer.from_pretrained(plain, device="cpu", dtype="fp32", max_new_tokens=12)
    assert without.classifier is None and without.fusion_weight == 0.0
    fused = Explainer.from_pretrained(trained.output, device="cpu", dtype="fp32", max_new_tokens=12)
    fused.fusion_weight = 0.0  # the classifier loaded, weighing nothing
    for e in toy_split[1][:3]:
        a, b = without.explain_detailed(e.log_entries or []), fused.explain_detailed(e.log_entries or [])
        assert a.explanation.model_dump(exclude={"model"}) == b.explanation.model_dump(exclude={"model"})
        assert a.category_scores == b.category_scores and "classifier_scores" not in a.extra
    # a folder calibrated with a classifier that lost it is an error, not a silent change of choice
    lost = _copy(plain, tmp_path / "lost", fusion_weight=0.4)
    with pytest.raises(ModelError, match=f"holds no {CLASSIFIER_FILE}"):
        Explainer.from_pretrained(lost, device="cpu", dtype="fp32")


def test_a_broken_classifier_file_is_a_model_error(
    trained: TrainResult, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors.numpy import save_file

    folder = _copy(trained.output, tmp_path / "broken")
    path = folder / CLASSIFIER_FILE
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header")
    with pytest.raises(ModelError, match="cannot load the category classifier"):
        Explainer.from_pretrained(folder, device="cpu", dtype="fp32")
    save_file({"idf": np.ones(3, dtype=np.float32)}, str(path))  # a safetensors file, not a classifier
    with pytest.raises(ModelError, match="cannot load the category classifier"):
        Explainer.from_pretrained(folder, device="cpu", dtype="fp32")
    classifier = CategoryClassifier.load(trained.output / CLASSIFIER_FILE)
    CategoryClassifier(("timeout", "disk_full"), classifier.terms, classifier.idf, classifier.coef[:2],
                       classifier.intercept[:2], classifier.settings).save(path)  # fmt: skip
    with pytest.raises(ModelError, match="categories the explainer does not"):
        Explainer.from_pretrained(folder, device="cpu", dtype="fp32")
    path.write_bytes(b"")
    argv = ["explain", "--model", str(folder), "--device", "cpu", "--dtype", "fp32", "--backend", "inprocess"]
    assert main([*argv, "--line", "ERROR orders timed out"]) == 2
    err = capsys.readouterr().err
    assert "cannot load the category classifier" in err and "Traceback" not in err
