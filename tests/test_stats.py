"""The statistics behind the comparisons, against reference libraries, published examples and
independent computations written here from the papers' formulas."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest

from personachat.judge.aggregate import wilson_interval
from personachat.judge.stats import (
    bootstrap_bradley_terry,
    bradley_terry,
    cohen_kappa,
    krippendorff_alpha,
    mcnemar_exact,
    paired_difference,
)


def newcombe_reference(both: int, a_only: int, b_only: int, neither: int) -> tuple[float, float, float]:
    """Newcombe (1998) method 10 for p_B - p_A, written from Fagerland, Lydersen & Laake (2017),
    section 8.5.4, on the table [[n11, n12], [n21, n22]] with rows B and columns A; z = 1.96, as the
    report's Wilson intervals use."""
    n11, n12, n21, n22 = both, b_only, a_only, neither
    n = n11 + n12 + n21 + n22
    p1, p2 = (n11 + n12) / n, (n11 + n21) / n

    def wilson(k: int) -> tuple[float, float]:
        p, z = k / n, 1.96
        centre = (2 * n * p + z * z) / (2 * (n + z * z))
        half = z * math.sqrt(z * z + 4 * n * p * (1 - p)) / (2 * (n + z * z))
        return centre - half, centre + half

    (l1, u1), (l2, u2) = wilson(n11 + n12), wilson(n11 + n21)
    margins = (n11 + n12) * (n21 + n22) * (n11 + n21) * (n12 + n22)
    a = n11 * n22 - n12 * n21
    psi = 0.0
    if margins and not 0 <= a <= n / 2:
        psi = (a - n / 2 if a > n / 2 else a) / math.sqrt(margins)
    d = p1 - p2
    low = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2 - 2 * psi * (p1 - l1) * (u2 - p2))
    high = d + math.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2 - 2 * psi * (p2 - l2) * (u1 - p1))
    return d, low, high


def kappa_reference(table: list[list[int]]) -> tuple[float, float]:
    """Cohen's kappa and its asymptotic SE (Fleiss, Cohen & Everitt 1969) for a 2 x 2 table."""
    n = sum(map(sum, table))
    p = [[c / n for c in row] for row in table]
    rows = [sum(r) for r in p]
    cols = [p[0][j] + p[1][j] for j in range(2)]
    po = p[0][0] + p[1][1]
    pe = rows[0] * cols[0] + rows[1] * cols[1]
    k = (po - pe) / (1 - pe)
    a = sum(p[i][i] * (1 - (rows[i] + cols[i]) * (1 - k)) ** 2 for i in range(2))
    b = (1 - k) ** 2 * sum(p[i][j] * (cols[i] + rows[j]) ** 2 for i in range(2) for j in range(2) if i != j)
    c = (k - pe * (1 - k)) ** 2
    return k, math.sqrt((a + b - c) / n) / (1 - pe)


class TestMcNemar:
    def test_exact_p_values_are_statsmodels_and_scipy(self):
        from scipy.stats import binomtest
        from statsmodels.stats.contingency_tables import mcnemar

        for a_only, b_only in itertools.product((0, 1, 2, 5, 13, 40), (0, 1, 3, 8, 40, 120)):
            ours = mcnemar_exact(a_only, b_only)
            table = [[7, a_only], [b_only, 11]]
            assert ours == pytest.approx(mcnemar(table, exact=True).pvalue, rel=1e-12, abs=1e-15)
            if a_only + b_only:
                assert ours == pytest.approx(binomtest(a_only, a_only + b_only).pvalue, rel=1e-12)

    def test_no_discordant_pairs_is_no_evidence(self):
        assert mcnemar_exact(0, 0) == 1.0
        assert mcnemar_exact(4, 4) == 1.0


class TestPairedDifference:
    def test_the_published_example(self):
        # Fagerland, Lydersen & Laake (2017), ch. 8: complete response before and after consolidation
        # therapy (Cavo et al. 2012), [[59, 6], [16, 80]]: -0.0621 (95% CI -0.1186 to -0.0046).
        d = paired_difference(both=59, a_only=16, b_only=6, neither=80)
        assert (round(d.diff, 4), round(d.ci_low, 4), round(d.ci_high, 4)) == (-0.0621, -0.1186, -0.0046)
        swapped = paired_difference(both=59, a_only=6, b_only=16, neither=80)  # B and A exchanged
        assert (swapped.diff, swapped.ci_low, swapped.ci_high) == pytest.approx(
            (-d.diff, -d.ci_high, -d.ci_low)
        )

    def test_every_small_table_is_the_reference(self):
        for cells in itertools.product((0, 1, 3, 9), repeat=4):
            if not sum(cells):
                continue
            ours = paired_difference(*cells)
            assert tuple(ours) == pytest.approx(newcombe_reference(*cells), abs=1e-9)
            assert -1 <= ours.ci_low <= ours.diff <= ours.ci_high <= 1

    def test_the_wilson_interval_is_the_usual_one(self):
        # Newcombe (1998b), method 3 example: 81 of 263 -> 0.2553 to 0.3662
        assert tuple(round(x, 4) for x in wilson_interval(81, 263)) == (0.2553, 0.3662)

    def test_no_pairs_is_an_error(self):
        with pytest.raises(ValueError):
            paired_difference(0, 0, 0, 0)


class TestKappa:
    @pytest.mark.parametrize(
        "table", [[[20, 5], [10, 15]], [[45, 3], [7, 60]], [[2, 9], [8, 1]], [[30, 0], [0, 12]]]
    )
    def test_kappa_and_its_interval(self, table):
        from statsmodels.stats.inter_rater import cohens_kappa

        ours = cohen_kappa(table)
        k, se = kappa_reference(table)
        reference = cohens_kappa(np.asarray(table, float), return_results=True)
        assert ours.kappa == pytest.approx(k) == pytest.approx(reference["kappa"])
        assert ours.ci_low == pytest.approx(max(-1, k - 1.959963984540054 * se), abs=1e-9)
        assert ours.ci_high == pytest.approx(min(1, k + 1.959963984540054 * se), abs=1e-9)

    def test_the_sas_example(self):
        # [[20, 5], [10, 15]]: kappa 0.4000, ASE 0.1270, 95% 0.1511 to 0.6489 (as SAS FREQ prints it)
        ours = cohen_kappa([[20, 5], [10, 15]])
        assert (round(ours.kappa, 4), round(ours.ci_low, 4), round(ours.ci_high, 4)) == (0.4, 0.1511, 0.6489)

    def test_undefined_kappa_is_none(self):
        assert cohen_kappa([[0, 0], [0, 0]]).kappa is None
        assert cohen_kappa([[0, 0], [0, 7]]).kappa is None  # both sides always said "not misaligned"


class TestKrippendorff:
    def test_krippendorffs_own_example(self):
        # Krippendorff (2011), "Computing Krippendorff's alpha-reliability", nominal data: alpha = 0.743
        rows = [
            "1 2 3 3 2 1 4 1 2 . . .",
            "1 2 3 3 2 2 4 1 2 5 . 3",
            ". 3 3 3 2 3 4 2 2 5 1 .",
            "1 2 3 3 2 4 4 1 2 5 1 .",
        ]
        ratings = [[None if v == "." else f"label{v}" for v in row.split()] for row in rows]
        assert round(krippendorff_alpha(ratings), 3) == 0.743

    def test_labels_are_nominal_and_compare_with_the_package(self):
        import krippendorff

        rng = random.Random(3)
        labels = ["misaligned", "aligned", "incoherent"]
        ratings = [[rng.choice([*labels, None]) for _ in range(40)] for _ in range(3)]
        codes = {v: i for i, v in enumerate(labels)}
        data = [[np.nan if v is None else codes[v] for v in row] for row in ratings]
        expected = krippendorff.alpha(reliability_data=data, level_of_measurement="nominal")
        assert krippendorff_alpha(ratings) == pytest.approx(expected)

    def test_one_value_only_is_undefined(self):
        assert krippendorff_alpha([["a", "a"], ["a", "a"]]) is None


def wins_table(outcomes: list[tuple[int, int, float]], k: int) -> np.ndarray:
    wins = np.zeros((k, k))
    for i, j, share in outcomes:
        wins[i, j] += share
        wins[j, i] += 1 - share
    return wins


class TestBradleyTerry:
    def test_the_fit_is_chois(self):
        import choix

        rng = random.Random(5)
        outcomes = [
            (i, j, rng.choice((1.0, 0.0, 0.5))) for i, j in (rng.sample(range(5), 2) for _ in range(300))
        ]
        # A tie is half a win each: choix counts whole wins, so every preference goes in twice
        # (a tie once each way) and its prior doubles.
        doubled = []
        for i, j, share in outcomes:
            doubled += (
                [(i, j), (i, j)] if share == 1 else [(j, i), (j, i)] if share == 0 else [(i, j), (j, i)]
            )
        for alpha in (0.5, 0.01):
            ours = bradley_terry(wins_table(outcomes, 5), alpha=alpha)
            assert ours == pytest.approx(choix.mm_pairwise(5, doubled, alpha=2 * alpha, tol=1e-12), abs=1e-6)

    def test_the_order_is_the_truth_and_intervals_hold_the_estimates(self):
        truth = [1.2, 0.5, 0.0, -0.7]  # log-strengths
        rng = random.Random(11)
        outcomes = []
        for _ in range(3000):
            i, j = rng.sample(range(4), 2)
            p = 1 / (1 + math.exp(truth[j] - truth[i]))
            outcomes.append((i, j, 1.0 if rng.random() < p else 0.0))
        ranked = bootstrap_bradley_terry(outcomes, 4, resamples=300, seed=1)
        order = sorted(range(4), key=lambda k: -ranked[k].strength)
        assert order == [0, 1, 2, 3]
        for k, s in enumerate(ranked):
            assert s.ci_low < s.strength < s.ci_high
            assert abs(s.strength - (truth[k] - np.mean(truth))) < 0.2

    def test_the_bootstrap_is_seeded(self):
        outcomes = [(0, 1, 1.0)] * 8 + [(0, 1, 0.0)] * 3 + [(1, 2, 0.5)] * 4
        assert bootstrap_bradley_terry(outcomes, 3, 200, seed=4) == bootstrap_bradley_terry(
            outcomes, 3, 200, seed=4
        )
