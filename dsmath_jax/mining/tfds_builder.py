"""The mined corpus as a TFDS dataset in ArrayRecord files, read by the pre-training input pipeline
with `tfds.data_source` (random access, no TensorFlow needed).

Features of each example (one page):

    url        Text     normalised URL
    domain     Text     host without www.
    text       Text     page text, mathematics as LaTeX
    score      float32  P(math) of the classifier of the iteration that produced the corpus
    iteration  int32    iteration in which the page was first collected
    language   Text     ISO 639-1 code or "unknown"
    tokens     int64    token count

The builder reads the final iteration's corpus shards (`corpus/pages-*.jsonl.gz`) from TFDS's
`manual_dir`. `build_corpus_dataset` prepares it; with a Beam runner (`beam_runner=`) TFDS writes the
ArrayRecord shards from a Beam pipeline, which is what a 100B-token corpus needs.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import tensorflow_datasets as tfds

from dsmath_jax.mining.files import iter_lines, match

logger = logging.getLogger(__name__)

NAME = "dsmath_corpus"
CORPUS_GLOB = "pages-*.jsonl.gz"
FEATURES = ("url", "domain", "text", "score", "iteration", "language", "tokens")


class DsmathCorpus(tfds.core.GeneratorBasedBuilder):
    """Math web pages mined by `dsmath mine` (DeepSeekMath §2.1)."""

    name = NAME
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: url, domain, text, score, iteration, language, tokens."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = "manual_dir is the `corpus/` directory of the final mining iteration."

    def __init__(self, *, use_beam: bool = False, **kwargs):
        self._use_beam = use_beam
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "url": tfds.features.Text(),
                "domain": tfds.features.Text(),
                "text": tfds.features.Text(),
                "score": tfds.features.Scalar(dtype=np.float32),
                "iteration": tfds.features.Scalar(dtype=np.int32),
                "language": tfds.features.Text(),
                "tokens": tfds.features.Scalar(dtype=np.int64),
            }),
            supervised_keys=None,
            homepage="https://arxiv.org/abs/2402.03300",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        pattern = os.path.join(os.fspath(dl_manager.manual_dir), CORPUS_GLOB)
        files = match(pattern)
        if not files:
            raise FileNotFoundError(f"no corpus shards match {pattern}")
        return {"train": self._generate_examples(files)}

    def _generate_examples(self, files: list[str]):
        if self._use_beam:
            import apache_beam as beam

            return beam.Create(files) | "Read" >> beam.FlatMap(_read_shard)
        return (item for path in files for item in _read_shard(path))


def _read_shard(path: str):
    for lineno, line in enumerate(iter_lines(path), 1):  # gzip from the extension
        if not line.strip():
            continue
        try:
            page = json.loads(line)
        except ValueError as e:
            raise ValueError(f"{path}:{lineno}: not a JSON page ({e})") from None
        yield page["url"], {k: page[k] for k in FEATURES}


def build_corpus_dataset(corpus_dir: str, data_dir: str, *, beam_runner=None, beam_options=None) -> str:
    """Writes the corpus in `corpus_dir` as the TFDS dataset `dsmath_corpus` under `data_dir`
    (ArrayRecord); returns the dataset directory. Read it with
    `tfds.data_source("dsmath_corpus", data_dir=data_dir, split="train")` (import this module first,
    or use `tfds.builder_from_directory(returned_dir)`)."""
    use_beam = beam_runner is not None or beam_options is not None
    builder = DsmathCorpus(use_beam=use_beam, data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=corpus_dir, beam_runner=beam_runner, beam_options=beam_options))
    logger.info("TFDS dataset %s: %s", NAME, builder.data_dir)
    return os.fspath(builder.data_dir)


__all__ = ["DsmathCorpus", "build_corpus_dataset", "NAME"]
