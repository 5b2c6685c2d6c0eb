"""The domain step (paper §2.1): domains in which more than 10% of the pages were collected are
math-related; their URL paths go to people for annotation (math or not); the uncollected pages under
paths annotated as math join the seed of the next iteration.

`DomainStats` computes, with combiners only (no domain's pages are ever gathered):

    path rows   {domain, path, pages, collected, collected_fraction, sample_titles, sample_urls}
    domain rows {domain, pages, collected, collected_fraction, tokens_collected}

The annotation CSV (`PATH_COLUMNS`) has one row per URL path of each math-related domain, sorted by
domain (most collected pages first) then path (most pages first), and an empty `is_math` column for
the annotator: `1`, `y`, `yes`, `true`, `math` or `x` mark a math path; `0`, `n`, `no`, `false` or
empty do not. `read_annotated_paths` reads it back.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import urllib.parse
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from dsmath_jax.mining.pages import Page
from dsmath_jax.mining.urls import path_matches

logger = logging.getLogger(__name__)

PATH_COLUMNS = ["domain", "path", "pages", "collected", "collected_fraction", "domain_pages",
                "domain_collected_fraction", "sample_titles", "sample_urls", "is_math"]
DOMAIN_COLUMNS = ["domain", "pages", "collected", "collected_fraction", "tokens_collected"]
TRUE_VALUES = {"1", "y", "yes", "true", "math", "x"}
FALSE_VALUES = {"", "0", "n", "no", "false", "not", "-"}


class AnnotationError(ValueError):
    """A malformed annotation CSV; the message names the file and line."""


def _sample_rank(url: str) -> int:
    return int.from_bytes(hashlib.blake2b(url.encode(), digest_size=8).digest(), "little")


class _PathStats(beam.CombineFn):
    """(collected: bool, tokens, title, url) -> {pages, collected, tokens_collected, samples}; the
    samples are the `n_samples` pages with the smallest URL hash (deterministic and mergeable)."""

    def __init__(self, n_samples: int = 3):
        self.n_samples = n_samples

    def create_accumulator(self):
        return [0, 0, 0, []]

    def add_input(self, acc, row):
        collected, tokens, title, url = row
        acc[0] += 1
        acc[1] += int(collected)
        acc[2] += tokens if collected else 0
        acc[3] = sorted(acc[3] + [(_sample_rank(url), title, url)])[:self.n_samples]
        return acc

    def merge_accumulators(self, accs):
        out = self.create_accumulator()
        for a in accs:
            out[0] += a[0]
            out[1] += a[1]
            out[2] += a[2]
            out[3] = sorted(out[3] + a[3])[:self.n_samples]
        return out

    def extract_output(self, acc):
        return {"pages": acc[0], "collected": acc[1], "tokens_collected": acc[2],
                "samples": [(title, url) for _, title, url in acc[3]]}


def _sum_domain(rows):
    pages = collected = tokens = 0
    for r in rows:
        pages += r[0]
        collected += r[1]
        tokens += r[2]
    return (pages, collected, tokens)


class DomainStats(beam.PTransform):
    """Scored pages, each with a boolean `collected`, -> {"paths": path rows of math-related domains,
    "domains": every domain row, "math_domains": domain rows above the threshold}."""

    def __init__(self, *, threshold: float = 0.10, n_samples: int = 3):
        super().__init__()
        self.threshold = threshold
        self.n_samples = n_samples

    def expand(self, pages):
        paths = (pages
                 | "PathKey" >> beam.Map(lambda p: ((p["domain"], p["path"]),
                                                    (bool(p["collected"]), int(p["tokens"]), p["title"], p["url"])))
                 | "PathStats" >> beam.CombinePerKey(_PathStats(self.n_samples)))
        domains = (paths
                   | "DomainKey" >> beam.Map(lambda kv: (kv[0][0], (kv[1]["pages"], kv[1]["collected"],
                                                                     kv[1]["tokens_collected"])))
                   | "DomainSum" >> beam.CombinePerKey(_SumTriples())
                   | "DomainRow" >> beam.Map(lambda kv: {"domain": kv[0], "pages": kv[1][0], "collected": kv[1][1],
                                                         "collected_fraction": kv[1][1] / max(kv[1][0], 1),
                                                         "tokens_collected": kv[1][2]}))
        math_domains = domains | "MathDomains" >> beam.Filter(lambda d: d["collected_fraction"] > self.threshold)
        path_rows = ({"domain": math_domains | "ByDomain" >> beam.Map(lambda d: (d["domain"], d)),
                      "paths": paths | "PathsByDomain" >> beam.Map(lambda kv: (kv[0][0], (kv[0][1], kv[1])))}
                     | "JoinDomains" >> beam.CoGroupByKey()
                     | "PathRows" >> beam.FlatMap(_path_rows))
        return {"paths": path_rows, "domains": domains, "math_domains": math_domains}


class _SumTriples(beam.CombineFn):
    def create_accumulator(self):
        return (0, 0, 0)

    def add_input(self, acc, x):
        return (acc[0] + x[0], acc[1] + x[1], acc[2] + x[2])

    def merge_accumulators(self, accs):
        return _sum_domain(accs)

    def extract_output(self, acc):
        return acc


def _path_rows(kv: tuple[str, dict[str, Any]]):
    domain, grouped = kv
    row = next(iter(grouped["domain"]), None)
    if row is None:
        return
    for path, stats in grouped["paths"]:  # streamed: paths of one domain
        yield {"domain": domain, "path": path, "pages": stats["pages"], "collected": stats["collected"],
               "collected_fraction": round(stats["collected"] / max(stats["pages"], 1), 4),
               "domain_pages": row["pages"], "domain_collected_fraction": round(row["collected_fraction"], 4),
               "sample_titles": " | ".join(t for t, _ in stats["samples"] if t),
               "sample_urls": " ".join(u for _, u in stats["samples"]), "is_math": ""}


def csv_line(row: dict[str, Any], columns: list[str]) -> str:
    """One CSV line (no newline) of `row`'s `columns`, quoted as needed."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow([row.get(c, "") for c in columns])
    return buf.getvalue()


def sort_csv(path: str, key_columns: list[tuple[str, bool, bool]]) -> int:
    """Sorts a CSV (header kept) in place, atomically; key_columns: (column, numeric, descending).
    CSVs of paths are small (math-related domains only), so this runs on the driver. Returns rows."""
    with FileSystems.open(path) as f:
        rows = list(csv.DictReader(io.TextIOWrapper(f, encoding="utf-8", newline="")))
        header = list(rows[0].keys()) if rows else None
    if header is None:
        with FileSystems.open(path) as f:
            header = next(csv.reader(io.TextIOWrapper(f, encoding="utf-8", newline="")), [])
    for column, numeric, descending in reversed(key_columns):
        rows.sort(key=lambda r: float(r[column]) if numeric else r[column], reverse=descending)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    tmp = path + ".tmp"
    with FileSystems.create(tmp) as f:
        f.write(buf.getvalue().encode("utf-8"))
    FileSystems.delete([path])
    FileSystems.rename([tmp], [path])
    return len(rows)


def read_annotated_paths(path: str) -> set[tuple[str, str]]:
    """{(domain, path)} marked as math in an annotated CSV (see the module docstring)."""
    with FileSystems.open(path) as f:
        reader = csv.DictReader(io.TextIOWrapper(f, encoding="utf-8", newline=""))
        missing = {"domain", "path", "is_math"} - set(reader.fieldnames or [])
        if missing:
            raise AnnotationError(f"{path}: missing columns {sorted(missing)} "
                                  "(expected at least domain, path, is_math)")
        marked: set[tuple[str, str]] = set()
        for row in reader:
            value = (row["is_math"] or "").strip().lower()
            if value in TRUE_VALUES:
                p = row["path"].strip()
                marked.add((row["domain"].strip().lower(), p if p.endswith("/") else p + "/"))
            elif value not in FALSE_VALUES:
                raise AnnotationError(f"{path}:{reader.line_num}: is_math must be one of "
                                      f"{sorted(TRUE_VALUES)} (math) or {sorted(FALSE_VALUES)} (not), got {value!r}")
    logger.info("%s: %d URL paths annotated as math", path, len(marked))
    return marked


def under_math_path(page: Page, math_paths: dict[str, list[str]]) -> bool:
    """Whether the page's URL path lies under a path annotated as math in its domain (annotated paths
    may be deeper than the CSV's, e.g. `/questions/algebra/`); math_paths: {domain: [paths]}."""
    paths = math_paths.get(page["domain"])
    if not paths:
        return False
    url_path = urllib.parse.urlsplit(page["url"]).path
    return any(path_matches(url_path, p) for p in paths)
