"""The fastText math classifier (paper §2.1): supervised training on seed pages (positives, label
`__label__math`) vs pages sampled from the crawl (negatives, `__label__other`), and batched scoring.

Paper settings: vector dimension 256, learning rate 0.1, word n-grams up to 3, minimum word count 3,
3 epochs. fastText reads one document per line, so `classifier_text` folds a page into one
lower-cased line with punctuation split from words (so `$x^2$` gives the tokens `$ x ^ 2 $`, and
LaTeX commands survive as `\\ frac`). Scoring calls `predict` on batches of lines: besides being
faster, it avoids the `fasttext` package's failure on a single string under numpy 2
(https://github.com/facebookresearch/fastText/issues/1312; `fasttext-numpy2` fixes it too).
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems

from dsmath_jax.mining.pages import Page

logger = logging.getLogger(__name__)

POSITIVE = "__label__math"
NEGATIVE = "__label__other"
_PUNCT = re.compile(r"([^\w\s])")
_SPACE = re.compile(r"\s+")


def classifier_text(text: str, max_chars: int = 20_000) -> str:
    """One line: lower-cased, punctuation split from words, whitespace folded, at most `max_chars`."""
    text = _PUNCT.sub(r" \1 ", text[:max_chars].lower())
    return _SPACE.sub(" ", text).strip()


def write_training_file(path: str, positives: Iterable[str], negatives: Iterable[str], *,
                        seed: int = 0, max_chars: int = 20_000) -> tuple[int, int]:
    """Writes fastText training lines (`__label__math ...` / `__label__other ...`), the two streams
    interleaved at random (so SGD does not see all of one class first) without holding either in memory.
    Returns (positives, negatives) written."""
    rng = random.Random(seed)
    n_pos = n_neg = 0
    pos_iter, neg_iter = iter(positives), iter(negatives)
    pos_next, neg_next = next(pos_iter, None), next(neg_iter, None)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        while pos_next is not None or neg_next is not None:
            take_pos = neg_next is None or (pos_next is not None and rng.random() < 0.5)
            if take_pos:
                assert pos_next is not None  # take_pos implies it
                line = classifier_text(pos_next, max_chars)
                if line:
                    f.write(f"{POSITIVE} {line}\n")
                    n_pos += 1
                pos_next = next(pos_iter, None)
            else:
                assert neg_next is not None  # not take_pos implies it
                line = classifier_text(neg_next, max_chars)
                if line:
                    f.write(f"{NEGATIVE} {line}\n")
                    n_neg += 1
                neg_next = next(neg_iter, None)
    os.replace(tmp, path)
    return n_pos, n_neg


def train_classifier(train_file: str, model_path: str, *, dim: int = 256, lr: float = 0.1, word_ngrams: int = 3,
                     min_count: int = 3, epochs: int = 3, bucket: int = 2_000_000, threads: int = 1,
                     seed: int = 0):
    """Trains fastText on a file from `write_training_file` and saves it to `model_path` (any Beam
    filesystem path; written to a temporary name, then renamed). Returns the model."""
    import fasttext

    model = fasttext.train_supervised(input=train_file, dim=dim, lr=lr, wordNgrams=word_ngrams, minCount=min_count,
                                      epoch=epochs, bucket=bucket, thread=threads, seed=seed, loss="softmax",
                                      verbose=0)
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "classifier.bin")
        model.save_model(local)
        _copy_to(local, model_path)
    logger.info("fastText classifier: %d words, dim %d -> %s", len(model.words), dim, model_path)
    return model


def _copy_to(local: str, path: str) -> None:
    tmp = path + ".tmp"
    with open(local, "rb") as src, FileSystems.create(tmp) as dst:
        shutil.copyfileobj(src, dst, 1 << 24)
    if FileSystems.exists(path):
        FileSystems.delete([path])
    FileSystems.rename([tmp], [path])


def load_classifier(model_path: str):
    """A fastText model from any Beam filesystem path (remote files are copied to a local temp file)."""
    import fasttext

    if os.path.exists(model_path):
        return fasttext.load_model(model_path)
    with tempfile.NamedTemporaryFile(suffix=".bin") as tmp:
        with FileSystems.open(model_path) as src:
            shutil.copyfileobj(src, tmp, 1 << 24)
        tmp.flush()
        return fasttext.load_model(tmp.name)


def math_scores(model, texts: list[str], *, max_chars: int = 20_000) -> np.ndarray:
    """[len(texts)] float32 P(math) for a batch of page texts (one `predict` call)."""
    if not texts:
        return np.zeros(0, np.float32)
    labels, probs = model.predict([classifier_text(t, max_chars) for t in texts], k=2)
    out = np.empty(len(texts), np.float32)
    for i, (lab, p) in enumerate(zip(labels, probs)):
        d = dict(zip(lab, p))
        out[i] = min(1.0, float(d.get(POSITIVE, 1.0 - d.get(NEGATIVE, 1.0))))
    return out


class ScorePages(beam.DoFn):
    """Batches of pages (from `beam.BatchElements`) -> pages with `score` = P(math)."""

    def __init__(self, model_path: str, max_chars: int = 20_000):
        self.model_path = model_path
        self.max_chars = max_chars
        self._model = None

    def setup(self):
        self._model = load_classifier(self.model_path)

    def process(self, batch: list[Page]) -> Iterator[Page]:
        scores = math_scores(self._model, [p["text"] for p in batch], max_chars=self.max_chars)
        for page, score in zip(batch, scores):
            yield {**page, "score": float(score)}
