"""A fast category classifier beside the explainer's LLM: TF-IDF of the prompt's lines + logistic regression.

``train-large`` fits it on the run's training records (every category the LLM chooses among, ``other``
included where real records are trained as ``other``) and saves it in the explainer folder as
``category_classifier.safetensors``: the idf, coefficients and intercepts as arrays, the vocabulary, the
classes and the settings in the file's metadata (no pickle). Both backends load it and fuse its
log-probabilities with the LLM's label scores (:func:`answer.choose_category`), with the weight
calibrated on held-out records (:mod:`large_model.calibration`).

The text it reads is the sequence as the explainer's prompt shows it (:func:`prompts.clean_lines`,
:func:`prompts.relative_timestamps`, :func:`prompts.shorten_ids`), followed by the prompt's comparison
with normal runs where the explainer has a flow profile (:mod:`large_model.evidence`). Scoring needs
numpy alone (the OpenAI-compatible backend runs without torch); fitting uses scikit-learn, with the
same analyzer as scoring, so the saved model gives the probabilities it was fitted to.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.errors import ModelError
from large_model import prompts

if TYPE_CHECKING:
    from large_model.encoding import Example
    from large_model.evidence import FlowProfile

log = logging.getLogger(__name__)

CLASSIFIER_FILE = "category_classifier.safetensors"
FORMAT = "logtriage-category-classifier"
VERSION = 1
# the log-probability of a category the classifier never saw in training (it cannot vote for it)
UNSEEN_LOG_PROB = math.log(1e-6)


@dataclass(frozen=True)
class ClassifierSettings:
    """How the text is prepared and vectorized, and the regression's strength (saved with the model)."""

    min_n: int = 1  # word n-grams from min_n to max_n
    max_n: int = 2
    min_df: int = 2  # a term kept where at least this many training records hold it
    sublinear_tf: bool = True  # 1 + log(count)
    lowercase: bool = True
    token_pattern: str = r"(?u)\b\w\w+\b"  # scikit-learn's default
    c: float = 10.0  # inverse regularization strength of the logistic regression
    max_iter: int = 2000
    relative_time: bool = True  # the prompt's relative timestamps
    short_ids: bool = True  # the prompt's shortened hex ids
    evidence: bool = True  # the prompt's comparison with normal runs, where the explainer has a flow profile


def analyze(text: str, settings: ClassifierSettings) -> list[str]:
    """The terms of ``text``: word n-grams as scikit-learn's word analyzer makes them."""
    tokens = re.findall(settings.token_pattern, text.lower() if settings.lowercase else text)
    terms: list[str] = []
    for n in range(settings.min_n, settings.max_n + 1):
        terms.extend(" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    return terms


def prepare_text(
    log_entries: Sequence[str | bytes],
    lang: str,
    settings: ClassifierSettings,
    profile: FlowProfile | None = None,
) -> str:
    """The sequence as the explainer's prompt shows it: cleaned lines, then the comparison with normal runs."""
    lines = prompts.clean_lines(log_entries)
    evidence = ""
    if settings.evidence and profile is not None:
        evidence = " ".join(profile.context_for(lines, prompts.check_lang(lang)).values())
    if settings.relative_time:
        lines = prompts.relative_timestamps(lines)
    if settings.short_ids:
        lines = [prompts.shorten_ids(line) for line in lines]
    return "\n".join([*lines, evidence] if evidence else lines)


class CategoryClassifier:
    """TF-IDF (sublinear tf, l2-normalized) + multinomial logistic regression over the known categories."""

    def __init__(
        self,
        classes: Sequence[str],
        vocabulary: Sequence[str],
        idf: np.ndarray,
        coef: np.ndarray,
        intercept: np.ndarray,
        settings: ClassifierSettings | None = None,
        train_records: int = 0,
    ) -> None:
        self.classes = tuple(str(c) for c in classes)
        self.settings = settings or ClassifierSettings()
        self.terms = list(vocabulary)
        self.vocabulary = {term: index for index, term in enumerate(self.terms)}
        self.idf = np.ascontiguousarray(idf, dtype=np.float32)  # (V,)
        self.coef = np.ascontiguousarray(coef, dtype=np.float32)  # (K, V); safetensors writes C order
        self.intercept = np.ascontiguousarray(intercept, dtype=np.float32)  # (K,)
        self.train_records = train_records
        k, v = len(self.classes), len(self.terms)
        if len(set(self.classes)) != k or k < 2:
            raise ModelError(f"the category classifier needs at least 2 distinct classes, got {list(self.classes)}")
        shapes = (self.idf.shape, self.coef.shape, self.intercept.shape)
        if len(self.vocabulary) != v or shapes != ((v,), (k, v), (k,)):
            raise ModelError(
                f"the category classifier's arrays do not fit its {k} classes and {v} terms: idf {self.idf.shape}, "
                f"coef {self.coef.shape}, intercept {self.intercept.shape}"
            )
        if not (np.isfinite(self.idf).all() and np.isfinite(self.coef).all() and np.isfinite(self.intercept).all()):
            raise ModelError("the category classifier holds values that are not finite")

    def features(self, text: str) -> np.ndarray:
        """The l2-normalized TF-IDF vector (V,) of ``text``."""
        counts = Counter(t for t in analyze(text, self.settings) if t in self.vocabulary)
        x = np.zeros(len(self.terms), dtype=np.float32)  # (V,)
        for term, count in counts.items():
            x[self.vocabulary[term]] = 1.0 + math.log(count) if self.settings.sublinear_tf else count
        x *= self.idf
        norm = float(np.linalg.norm(x))
        return x / norm if norm > 0 else x

    def log_proba_text(self, text: str) -> np.ndarray:
        """Log-probabilities (K,) of :attr:`classes` for a prepared text."""
        logits = self.coef @ self.features(text) + self.intercept  # (K,)
        logits = logits.astype(np.float64)
        return logits - (logits.max() + np.log(np.exp(logits - logits.max()).sum()))

    def log_proba(
        self, log_entries: Sequence[str | bytes], lang: str = "en", profile: FlowProfile | None = None
    ) -> dict[str, float]:
        """Log-probability of each class for a sequence (``profile``: the explainer's flow profile)."""
        text = prepare_text(log_entries, lang, self.settings, profile)
        return dict(zip(self.classes, (float(v) for v in self.log_proba_text(text)), strict=True))

    def category_log_probs(
        self,
        categories: Sequence[str],
        log_entries: Sequence[str | bytes],
        lang: str = "en",
        profile: FlowProfile | None = None,
    ) -> list[float]:
        """Log-probabilities in the order of ``categories`` (one the classifier never saw: :data:`UNSEEN_LOG_PROB`)."""
        by_class = self.log_proba(log_entries, lang, profile)
        return [by_class.get(c, UNSEEN_LOG_PROB) for c in categories]

    def check_labels(self, categories: Sequence[str], profile: FlowProfile | None) -> None:
        """ModelError where the classifier names a category the explainer does not know, or lacks its evidence."""
        unknown = [c for c in self.classes if c not in categories]
        if unknown:
            raise ModelError(f"the category classifier knows categories the explainer does not: {unknown}")
        if self.settings.evidence and profile is None:
            raise ModelError("the category classifier was fitted with the flow evidence, the explainer has no profile")

    def describe(self) -> dict[str, Any]:
        """What ``explainer.json`` records of it."""
        return {"file": CLASSIFIER_FILE, "classes": list(self.classes), "terms": len(self.terms),
                "train_records": self.train_records, "settings": asdict(self.settings)}  # fmt: skip

    def save(self, path: str | Path) -> Path:
        """Write the safetensors file: arrays as tensors, the rest as JSON in its metadata."""
        from safetensors.numpy import save_file

        config = {
            "format": FORMAT,
            "version": VERSION,
            "classes": list(self.classes),
            "vocabulary": self.terms,
            "settings": asdict(self.settings),
            "train_records": self.train_records,
        }
        out = Path(path)
        tensors = {"idf": self.idf, "coef": self.coef, "intercept": self.intercept}
        save_file(tensors, str(out), metadata={"config": json.dumps(config, ensure_ascii=False)})
        return out

    @classmethod
    def load(cls, path: str | Path) -> CategoryClassifier:
        """Read :meth:`save`'s file; anything missing, malformed or of another format is a :class:`ModelError`."""
        from safetensors import safe_open

        p = Path(path)
        try:
            with safe_open(str(p), framework="numpy") as f:
                metadata = f.metadata() or {}
                arrays = {name: f.get_tensor(name) for name in ("idf", "coef", "intercept")}
            config = json.loads(metadata["config"])
            if not isinstance(config, dict) or config.get("format") != FORMAT or config.get("version") != VERSION:
                raise ValueError(f"not a {FORMAT} file of version {VERSION}")
            settings = ClassifierSettings(**config["settings"])
            return cls(
                config["classes"],
                [str(t) for t in config["vocabulary"]],
                arrays["idf"],
                arrays["coef"],
                arrays["intercept"],
                settings,
                int(config.get("train_records", 0)),
            )
        except ModelError as exc:
            raise ModelError(f"cannot load the category classifier {p}: {exc}") from None
        except Exception as exc:  # safetensors' own errors, a bad header, a missing key or field
            raise ModelError(f"cannot load the category classifier {p}: {type(exc).__name__}: {exc}") from None


def fit_category_classifier(
    examples: Sequence[Example], profile: FlowProfile | None = None, settings: ClassifierSettings | None = None
) -> CategoryClassifier | None:
    """Fit on the records with log lines; None where they hold fewer than 2 categories."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    rows = [e for e in examples if e.log_entries]
    if len({e.category for e in rows}) < 2:
        log.warning("category classifier: fewer than 2 categories among %d records with lines: none fitted", len(rows))
        return None
    settings = settings or ClassifierSettings()
    # what this fit used: the evidence only with a profile, every term where the records are a handful
    settings = replace(
        settings,
        evidence=settings.evidence and profile is not None,
        min_df=settings.min_df if len(rows) >= 2 * settings.min_df else 1,
    )
    texts = [prepare_text(e.log_entries or [], e.lang, settings, profile) for e in rows]
    vectorizer = TfidfVectorizer(
        analyzer=lambda text: analyze(text, settings), min_df=settings.min_df, sublinear_tf=settings.sublinear_tf
    )
    x = vectorizer.fit_transform(texts)
    regression = LogisticRegression(C=settings.c, max_iter=settings.max_iter).fit(x, [e.category for e in rows])
    classes = [str(c) for c in regression.classes_]
    coef, intercept = regression.coef_, regression.intercept_
    if len(classes) == 2:  # scikit-learn keeps one row for two classes: p(second) = sigmoid(z) = softmax([0, z])
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.concatenate([np.zeros_like(intercept), intercept])
    terms = [""] * len(vectorizer.vocabulary_)
    for term, index in vectorizer.vocabulary_.items():
        terms[index] = term
    classifier = CategoryClassifier(classes, terms, vectorizer.idf_, coef, intercept, settings, len(rows))
    log.info("category classifier: %d records, %d classes, %d terms", len(rows), len(classes), len(terms))
    return classifier
