"""Statistical checks shared by the statistics tests, written from closed forms.

Nothing here calls the library: each expected value is computed in NumPy
from the formula written out below, so a wrong formula in the library cannot
hide in the expectation. Every check is two-sided at `Z` standard errors
(`Z = 4`: a false alarm with probability about 6e-5 per check; the seeds are
fixed, so a passing run keeps passing). The tests state the power of each
check against a nearby wrong parameter and assert, on the same draws, that
the check rejects that parameter.
"""

import numpy as np
from scipy import stats

Z = 4.0


# ------------------------------------------------------------------ Beta
def beta_moments(a):
    """Mean, variance and fourth central moment of Beta(a, a).

    mean 1/2, var 1 / (4 (2a + 1)), excess kurtosis -6 / (2a + 3).
    """
    var = 1.0 / (4.0 * (2.0 * a + 1.0))
    mu4 = var**2 * (3.0 - 6.0 / (2.0 * a + 3.0))
    return 0.5, var, mu4


def beta_check(draws, a, z=Z):
    """`(ok, why)`: do `draws` have the mean and variance of Beta(a, a)?

    The sample mean is within `z` standard errors (sqrt(var / n)) of 1/2 and
    the sample variance within `z` standard errors (sqrt((mu4 - var^2) / n))
    of 1 / (4 (2a + 1)).
    """
    draws = np.asarray(draws, np.float64)
    n = draws.size
    mean, var, mu4 = beta_moments(a)
    se_mean = np.sqrt(var / n)
    se_var = np.sqrt((mu4 - var**2) / n)
    z_mean = (draws.mean() - mean) / se_mean
    z_var = (draws.var() - var) / se_var
    why = (f"Beta({a}, {a}), n={n}: mean {draws.mean():.5f} (z {z_mean:+.1f}), "
           f"var {draws.var():.6f} vs {var:.6f} (z {z_var:+.1f})")
    return abs(z_mean) < z and abs(z_var) < z, why


def assert_beta(draws, a, nearby=1.1):
    """Asserts Beta(a, a) (moments and KS, p > 1e-3) and, unless `nearby` is
    None, that the same draws reject Beta(a * nearby) and Beta(a / nearby)
    (the check has the power it claims)."""
    ok, why = beta_check(draws, a)
    assert ok, why
    assert stats.kstest(draws, stats.beta(a, a).cdf).pvalue > 1e-3, why
    for wrong in () if nearby is None else (a * nearby, a / nearby):
        ok, why = beta_check(draws, wrong)
        assert not ok, f"the check does not tell alpha {a} from {wrong}: {why}"


# ------------------------------------------------------------ frequencies
def freq_check(count, n, p, z=Z):
    """`(ok, why)`: is `count / n` within `z` binomial standard errors of `p`?"""
    se = np.sqrt(p * (1.0 - p) / n)
    got = count / n
    return abs(got - p) < z * se, f"{got:.4f} vs {p:.4f} (se {se:.4f}, n {n})"


def assert_freq(count, n, p, nearby=0.05, what="frequency"):
    """Asserts the frequency is `p` and that it rejects `p - nearby` and `p + nearby`."""
    ok, why = freq_check(count, n, p)
    assert ok, f"{what}: {why}"
    for wrong in (p - nearby, p + nearby):
        if 0.0 < wrong < 1.0:
            ok, why = freq_check(count, n, wrong)
            assert not ok, f"{what}: the check does not tell {p} from {wrong}: {why}"


# ------------------------------------------------------------ block masks
def block_seed_rate(gamma, b, h, w):
    """The per-element seed rate that makes `gamma` the dropped share of an
    unclipped map: gamma H W / (b^2 (H - b + 1) (W - b + 1))."""
    return gamma * h * w / (b * b * (h - b + 1) * (w - b + 1))


def block_fraction(h, w, b, rate):
    """E[share of an H x W map covered by b x b blocks grown from Bernoulli(rate)
    seeds] (the square centred on each seed, clipped to the map).

    An element is covered iff some seed lies in its b x b neighbourhood
    clipped to the map: P = 1 - (1 - rate)^(cells of that neighbourhood).
    """
    r = b // 2
    rows = np.minimum(np.arange(h) + r, h - 1) - np.maximum(np.arange(h) - r, 0) + 1
    cols = np.minimum(np.arange(w) + r, w - 1) - np.maximum(np.arange(w) - r, 0) + 1
    cells = rows[:, None] * cols[None, :]
    return float(np.mean(1.0 - (1.0 - rate) ** cells))


def mean_check(values, expected, z=Z):
    """`(ok, why)`: is the mean of `values` within `z` standard errors
    (sample sd / sqrt(n)) of `expected`?"""
    values = np.asarray(values, np.float64)
    se = values.std(ddof=1) / np.sqrt(values.size)
    got = values.mean()
    return abs(got - expected) < z * se, f"{got:.5f} vs {expected:.5f} (se {se:.5f})"
