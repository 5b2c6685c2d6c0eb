"""Recall (paper §2.1): rank every scored page and keep the top ones within a token budget, without
ever sorting or gathering the pages.

The cut is a token-weighted quantile of the scores: with T tokens in all and a budget of B, the
pages above the (1 - B/T) weighted quantile of score hold about B tokens. Beam's
`ApproximateQuantiles` (a mergeable quantile sketch, Greenwald-Khanna style) computes it in one
combine; the resolution is 1/(num_quantiles - 1) of the tokens (0.1% with the default 1001).
Scores saturate (fastText gives exactly 1.00001 to many confident pages), so each page is ranked by
(score, a hash of its URL): ties are cut deterministically instead of all kept or all dropped.
"""

from __future__ import annotations

import hashlib
import math

import apache_beam as beam
from apache_beam.transforms.stats import ApproximateQuantiles

from dsmath_jax.mining.metrics import count
from dsmath_jax.mining.pages import Page

Rank = tuple[float, float]


def rank_key(page: Page) -> Rank:
    """(score, URL hash in [0, 1)): a total order on pages, best last."""
    h = int.from_bytes(hashlib.blake2b(page["url"].encode(), digest_size=8).digest(), "little")
    return (float(page["score"]), h / 2**64)


def budget_threshold(quantiles: list[Rank], total_tokens: int, budget: float) -> Rank | None:
    """The rank a page must exceed to be kept, from token-weighted quantiles (ascending, first = min,
    last = max); None keeps every page (budget >= total)."""
    if not quantiles or total_tokens <= 0 or budget >= total_tokens:
        return None
    if budget <= 0:
        return (math.inf, math.inf)
    q = 1.0 - budget / total_tokens
    lo, hi = quantiles[min(len(quantiles) - 1, int(math.floor(q * (len(quantiles) - 1))))]  # a list when read from JSON
    return (lo, hi)


def flag_collected(page: Page, cut: dict, min_score: float = 0.0) -> Page:
    """The page with `collected` = whether it ranks above the cut (`cut["rank"]`, None keeps all) and
    scores at least `min_score`. Counters `collected_pages`, `collected_tokens`."""
    rank = cut["rank"]
    collected = page["score"] >= min_score and (rank is None or rank_key(page) > tuple(rank))
    if collected:
        count("collected_pages", 1)
        count("collected_tokens", int(page["tokens"]))
    return {**page, "collected": collected}


class RecallPages(beam.PTransform):
    """Scored pages -> {"pages": every page with a boolean `collected`, "threshold": one-element
    PCollection {"rank": the cut or None, "total_tokens": T, "budget": B}}.

    budget: tokens to keep; with `budget_is_fraction`, a fraction of all scored tokens instead.
    min_score: pages scoring below it are never kept, whatever the budget.
    """

    def __init__(self, budget: float, *, budget_is_fraction: bool = False, min_score: float = 0.0,
                 num_quantiles: int = 1001):
        super().__init__()
        self.budget = budget
        self.budget_is_fraction = budget_is_fraction
        self.min_score = min_score
        self.num_quantiles = num_quantiles

    def expand(self, scored):
        total = (scored
                 | "Tokens" >> beam.Map(lambda p: int(p["tokens"]))
                 | "TotalTokens" >> beam.CombineGlobally(sum))
        quantiles = (scored
                     | "RankWeight" >> beam.Map(lambda p: (rank_key(p), max(1, int(p["tokens"]))))
                     | "Quantiles" >> ApproximateQuantiles.Globally(self.num_quantiles, weighted=True))
        budget, is_fraction = self.budget, self.budget_is_fraction

        def threshold(q, total_tokens):
            tokens = budget * total_tokens if is_fraction else budget
            return {"rank": budget_threshold(list(q), total_tokens, tokens), "total_tokens": int(total_tokens),
                    "budget": float(tokens)}

        cut = quantiles | "Threshold" >> beam.Map(threshold, total_tokens=beam.pvalue.AsSingleton(total))
        pages = scored | "Flag" >> beam.Map(flag_collected, beam.pvalue.AsSingleton(cut), self.min_score)
        return {"pages": pages, "threshold": cut}
