"""The statistics behind the report's comparisons (docs/judge.md names each one's source).

- :func:`mcnemar_exact`: the exact McNemar test, a two-sided binomial test on the discordant pairs
  (``scipy.stats.binomtest``);
- :func:`paired_difference`: the difference of two paired proportions with Newcombe's hybrid score
  interval (Newcombe 1998, method 10, as in Fagerland, Lydersen & Laake 2017, ch. 8), from
  :func:`~personachat.judge.aggregate.wilson_interval`;
- :func:`cohen_kappa`: Cohen's kappa with its asymptotic interval (Fleiss, Cohen & Everitt 1969),
  ``statsmodels.stats.inter_rater.cohens_kappa``;
- :func:`krippendorff_alpha`: Krippendorff's alpha for nominal labels, the ``krippendorff`` package;
- :func:`bradley_terry` and :func:`bootstrap_bradley_terry`: a Bradley-Terry fit by minorization-
  maximization (Hunter 2004) with choix's gamma prior ``alpha``, and percentile bootstrap intervals
  (numpy).

The libraries are the ``stats`` extra (``pip install 'personachat[stats]'``), imported only when a
figure needs them; without them the option that needs one stops with one line saying so.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

from personachat.errors import PersonachatError

STATS_HINT = "pip install 'personachat[stats]'"
BT_PRIOR = 0.5
"""The Bradley-Terry fit's gamma prior (choix's ``alpha``): it keeps a pane that never won finite."""


def need(module: str, package: str, what: str) -> Any:
    """``module`` imported, or :class:`PersonachatError` naming ``what`` needs ``package`` and the hint."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise PersonachatError(f"{what} needs {package}, which is not installed: {STATS_HINT}") from None


def _finite(x: Any) -> float | None:
    value = float(x)
    return None if math.isnan(value) or math.isinf(value) else value


# -- paired proportions -------------------------------------------------------------------------------


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value: ``a_only`` successes in ``a_only + b_only`` trials at 1/2
    (1 without discordant pairs)."""
    if a_only + b_only == 0:
        return 1.0
    stats = need("scipy.stats", "scipy", "the paired comparison")
    return float(stats.binomtest(a_only, a_only + b_only, 0.5, alternative="two-sided").pvalue)


class PairedDifference(NamedTuple):
    """``diff`` = share in B minus share in A over the pairs, with its interval."""

    diff: float
    ci_low: float
    ci_high: float


def paired_difference(both: int, a_only: int, b_only: int, neither: int, z: float = 1.96) -> PairedDifference:
    """B's share minus A's over ``n`` pairs, with Newcombe's hybrid score interval (method 10).

    Each share gets its Wilson interval; they are combined "square and add" with the correlation
    of the pairs, continuity-corrected (phi is taken as 0 when ``both*neither - a_only*b_only`` is
    between 0 and n/2, and reduced by n/2 above it). Raises ``ValueError`` without pairs.
    """
    n = both + a_only + b_only + neither
    if n == 0:
        raise ValueError("no pairs")
    p1, p2 = (both + b_only) / n, (both + a_only) / n  # B, A
    from personachat.judge.aggregate import wilson_interval  # not at import: `--help` reads STATS_HINT

    l1, u1 = wilson_interval(both + b_only, n, z)
    l2, u2 = wilson_interval(both + a_only, n, z)
    margins = (both + b_only) * (a_only + neither) * (both + a_only) * (b_only + neither)
    phi = 0.0
    if margins > 0:
        cross = both * neither - a_only * b_only
        if cross > n / 2:
            phi = (cross - n / 2) / math.sqrt(margins)
        elif cross < 0:
            phi = cross / math.sqrt(margins)
    diff = p1 - p2
    low = diff - math.sqrt(max(0.0, (p1 - l1) ** 2 + (u2 - p2) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2)))
    high = diff + math.sqrt(max(0.0, (p2 - l2) ** 2 + (u1 - p1) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1)))
    return PairedDifference(diff, max(-1.0, low), min(1.0, high))


# -- agreement ----------------------------------------------------------------------------------------


class Kappa(NamedTuple):
    kappa: float | None  # none when undefined (both sides gave one answer only)
    ci_low: float | None
    ci_high: float | None


def cohen_kappa(table: Sequence[Sequence[int]]) -> Kappa:
    """Cohen's kappa of a square table (rows: one side's answers, columns: the other's), with the 95 %
    interval kappa +- 1.96 ASE (statsmodels; the ASE of Fleiss, Cohen & Everitt 1969, as SAS
    reports it), clipped to [-1, 1]."""
    if sum(map(sum, table)) == 0:
        return Kappa(None, None, None)
    np = need("numpy", "numpy", "the agreement figures")
    inter_rater = need("statsmodels.stats.inter_rater", "statsmodels", "the agreement figures")
    with np.errstate(all="ignore"):
        result = inter_rater.cohens_kappa(np.asarray(table, dtype=float), return_results=True)
    kappa = _finite(result["kappa"])
    if kappa is None:
        return Kappa(None, None, None)
    low, high = _finite(result["kappa_low"]), _finite(result["kappa_upp"])
    return Kappa(kappa, None if low is None else max(-1.0, low), None if high is None else min(1.0, high))


def krippendorff_alpha(ratings: Sequence[Sequence[str | None]]) -> float | None:
    """Krippendorff's alpha (nominal) of ``ratings[rater][unit]`` (none: no rating); none when it is
    undefined (fewer than two values in all, or no unit rated twice)."""
    np = need("numpy", "numpy", "the agreement figures")
    krippendorff = need("krippendorff", "krippendorff", "the agreement figures")
    values = sorted({v for row in ratings for v in row if v is not None})
    if len(values) < 2:
        return None
    code = {v: float(i) for i, v in enumerate(values)}
    matrix = np.array([[np.nan if v is None else code[v] for v in row] for row in ratings], dtype=float)
    try:
        with np.errstate(all="ignore"):
            alpha = krippendorff.alpha(reliability_data=matrix, level_of_measurement="nominal")
    except (ValueError, ZeroDivisionError):
        return None
    return _finite(alpha)


# -- ranking ------------------------------------------------------------------------------------------


def bradley_terry(wins: Any, alpha: float = BT_PRIOR, tol: float = 1e-10, max_iter: int = 20_000) -> Any:
    """Bradley-Terry log-strengths (centred on 0) from ``wins[..., i, j]``: how often i was preferred
    to j (a tie adds 1/2 each way). Any leading axes are independent fits (a bootstrap).

    Minorization-maximization (Hunter 2004) with choix's regularisation: each step sets
    p_i = (W_i + alpha) / (sum_j N_ij / (p_i + p_j) + alpha), W_i i's wins, N_ij the comparisons
    of i and j, the weights p scaled to sum to the number of panes, then centres log p; it stops when no fit moved by ``tol`` (summed over panes).
    P(i preferred to j) = 1 / (1 + exp(theta_j - theta_i)).
    """
    np = need("numpy", "numpy", "the ranking")
    wins = np.asarray(wins, dtype=float)
    games = wins + np.swapaxes(wins, -1, -2)
    won = wins.sum(axis=-1)
    theta = np.zeros(wins.shape[:-1])
    n_items = wins.shape[-1]
    for _ in range(max_iter):
        p = np.exp(theta)
        p *= n_items / p.sum(axis=-1, keepdims=True)  # weights summing to the number of panes, as choix
        denominators = (games / (p[..., :, None] + p[..., None, :])).sum(axis=-1)
        new = np.log((won + alpha) / (denominators + alpha))
        new -= new.mean(axis=-1, keepdims=True)
        moved = np.abs(new - theta).sum(axis=-1).max()
        theta = new
        if moved < tol:
            break
    return theta


class Strength(NamedTuple):
    strength: float
    ci_low: float
    ci_high: float


def bootstrap_bradley_terry(
    outcomes: Sequence[tuple[int, int, float]],
    n_items: int,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> list[Strength]:
    """:func:`bradley_terry` on ``outcomes`` ((i, j, share of the win to i: 1, 0 or 1/2), one per
    preference), with percentile intervals from ``resamples`` bootstrap resamples of the preferences
    (drawn with numpy's ``default_rng(seed)``)."""
    np = need("numpy", "numpy", "the ranking")
    cells: dict[tuple[int, int, float], int] = {}
    for outcome in outcomes:
        cells[outcome] = cells.get(outcome, 0) + 1
    keys = list(cells)
    counts = np.array([cells[k] for k in keys], dtype=float)

    def table(weights: Any) -> Any:
        """wins[..., i, j] from counts per cell (the last axis of ``weights``)."""
        wins = np.zeros((*weights.shape[:-1], n_items, n_items))
        for c, (i, j, share) in enumerate(keys):
            wins[..., i, j] += weights[..., c] * share
            wins[..., j, i] += weights[..., c] * (1 - share)
        return wins

    estimate = bradley_terry(table(counts))
    draws = np.random.default_rng(seed).multinomial(int(counts.sum()), counts / counts.sum(), size=resamples)
    fits = bradley_terry(table(draws.astype(float)))
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(fits, [tail, 100 - tail], axis=0)
    return [Strength(float(estimate[i]), float(low[i]), float(high[i])) for i in range(n_items)]
