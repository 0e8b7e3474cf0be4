"""Every option that shapes a distribution, at values other than the paper's.

The draws go through the public path a training step takes: `Method(...)
.draw_plan` for the per-batch plan, `MixingModel.mixed_forward` for the
masks. The expected values are closed forms computed in NumPy
(`tests/helpers/stats.py`), never by the library.

Tolerances are 4 standard errors (a false alarm about once in 16 000 checks;
the seeds are fixed, so a passing run stays passing). Power, per check:

* `alpha` (n = 20 000 Beta draws): the sample variance of Beta(a, a) has a
  standard error of sqrt((mu4 - var^2) / n), 0.5 to 0.6 % of the variance
  for a in [0.5, 8]; a 10 % wrong alpha moves the variance by about 4.5 %,
  i.e. 9.4 to 9.8 standard errors, so it passes the 4-se check with
  probability below 1e-7. Each test also asserts that its own draws reject
  alpha * 1.1 and alpha / 1.1. (Beta(2, 2) used for alpha 8 is 240 standard
  errors off; for alpha 0.5, 150.)
* probabilities (n = 20 000 plans): 4 se is 0.013 at p = 0.3 and 0.011 at
  p = 0.8; a probability 0.05 off is 11 se away (power > 1 - 1e-15); the
  tests assert that p - 0.05 and p + 0.05 are rejected.
* block masks: the standard error is measured from the draws (its size is
  noted at each test); gamma or keep_prob 0.05 off moves the expected share
  by at least 17 se, and the tests assert both neighbours are rejected.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from patchup_tf.layers import MixingPoint
from patchup_tf.methods import Method
from patchup_tf.training import MixingModel
from tests.helpers.stats import (
    assert_beta,
    assert_freq,
    block_fraction,
    block_seed_rate,
    mean_check,
)

N_DRAWS = 20_000


def draw_plans(method, n, batch=4, second=29):
    """`(apply, active, lam)` of the plans of seeds (0, second) .. (n-1, second)."""
    seeds = tf.stack([tf.range(n), tf.fill([n], second)], axis=1)

    @tf.function
    def draw(seeds):
        def one(s):
            plan = method.draw_plan(s, batch)
            return plan["apply"], plan["active"], plan["lam"]

        return tf.map_fn(one, seeds, fn_output_signature=(tf.bool, tf.bool, tf.float32),
                         parallel_iterations=64)

    return tuple(t.numpy() for t in draw(seeds))


# ------------------------------------------------------------------ alpha
@pytest.mark.parametrize("alpha", [0.5, 8.0])
@pytest.mark.parametrize("name", ["mixup", "manifold_mixup"])
def test_mixup_lam_follows_alpha(name, alpha):
    apply, active, lam = draw_plans(Method(name, alpha=alpha), N_DRAWS)
    assert apply.all() and (active.sum(axis=1) == 1).all()
    assert_beta(lam, alpha)


@pytest.mark.parametrize("alpha", [0.5, 8.0])
@pytest.mark.parametrize("name", ["soft_patchup", "hard_patchup"])
def test_patchup_lam_follows_alpha(name, alpha):
    # Positions 1..k mix with lam ~ Beta(alpha, alpha); position 0 is CutMix,
    # lam ~ Beta(1, 1) whatever alpha is. k = 2: a third of the plans at 0.
    n = N_DRAWS * 3 // 2
    apply, active, lam = draw_plans(Method(name, alpha=alpha, patchup_prob=1.0), n)
    assert apply.all() and (active.sum(axis=1) == 1).all()
    hidden = ~active[:, 0]
    assert hidden.sum() >= N_DRAWS * 0.97
    assert_beta(lam[hidden], alpha)
    # (about 10 000 draws: 6.7 se for a 10 % wrong alpha, so no power claim)
    assert_beta(lam[~hidden], 1.0, nearby=None)


# ------------------------------------------------------------ probabilities
@pytest.mark.parametrize(
    "name,options,p",
    [("hard_patchup", {"patchup_prob": 0.3}, 0.3),
     ("soft_patchup", {"patchup_prob": 0.3}, 0.3),
     ("cutmix", {"cutmix_prob": 0.8}, 0.8)],
)
def test_mixing_probability(name, options, p):
    apply, active, _ = draw_plans(Method(name, **options), N_DRAWS)
    assert_freq(apply.sum(), N_DRAWS, p, nearby=0.05, what=f"{name} {options}")
    # a plan that does not apply acts nowhere; one that applies acts once
    np.testing.assert_array_equal(active.any(axis=1), apply)
    assert (active.sum(axis=1) <= 1).all()


# ------------------------------------------------------------ block masks
def feature_model(width, channels, method, **options):
    """A model whose "logits" are its input after one mixing point (position
    1): `mixed_forward` returns the mixed features themselves."""
    inputs = keras.Input((width, width, channels))
    features = MixingPoint(1, name="mix_1")(inputs)
    outputs = keras.layers.Flatten()(features)
    return MixingModel(inputs, outputs, method=method, method_options={"k": 1, **options},
                       seed=0)


def mixed_over_seeds(model, x, targets, n):
    """`(features, u)` of `mixed_forward` under the plans of n seeds, with
    position 1 made the active one; the features of each draw flattened."""
    seeds = tf.stack([tf.range(n), tf.fill([n], 41)], axis=1)
    at_1 = tf.constant([False, True, False, False, False])

    @tf.function
    def run(seeds):
        def one(s):
            plan = dict(model.draw_plan(x, seed=s))
            plan["active"] = at_1
            out, state = model.mixed_forward(x, targets, plan)
            return out, state.u

        return tf.map_fn(one, seeds, fn_output_signature=(tf.float32, tf.float32),
                         parallel_iterations=16)

    out, u = run(seeds)
    return out.numpy().reshape(n, -1), u.numpy()


@pytest.mark.parametrize("width,block_size", [(32, 7), (16, 5), (8, 3)])
def test_dropblock_keep_prob_sets_the_dropped_share(width, block_size):
    keep, channels, n = 0.7, 4, 400
    model = feature_model(width, channels, "dropblock", keep_prob=keep, block_size=block_size)
    x = tf.ones([2, width, width, channels])
    out, u = mixed_over_seeds(model, x, tf.one_hot([0, 1], 2), n)
    assert (u == 1.0).all()
    dropped = (out == 0).mean(axis=1)
    # DropBlock rescales the kept units: a constant map keeps its mean (unless
    # every unit is dropped: then all are 0)
    some_kept = dropped < 1
    np.testing.assert_allclose(out[some_kept].mean(axis=1), 1.0, atol=1e-5)
    assert (out[~some_kept] == 0).all()
    # the block is the option, or the largest odd size that fits the map
    b = min(block_size, width if width % 2 else width - 1)

    def expected(keep_prob):
        return block_fraction(width, width, b, block_seed_rate(1 - keep_prob, b, width, width))

    ok, why = mean_check(dropped, expected(keep))
    assert ok, why
    # se 0.0015 to 0.0025 here (400 draws); keep_prob 0.65 or 0.75 moves the
    # share by 0.045 to 0.05, at least 18 se (a miss has probability < 1e-30):
    # both must be rejected, and so must the block-seed rate left unadjusted
    # (1 - keep_prob per element).
    for wrong in (keep - 0.05, keep + 0.05):
        assert not mean_check(dropped, expected(wrong))[0], (wrong, why)
    assert not mean_check(dropped, block_fraction(width, width, b, 1 - keep))[0], why


@pytest.mark.parametrize("width,block", [(32, 7), (16, 5), (8, 3)])
def test_patchup_gamma_sets_the_changed_share(width, block):
    # PatchUp's block on a map of this width: 7 (32 wide), 5 (16), 3 (8).
    gamma, channels, n = 0.3, 4, 1000
    model = feature_model(width, channels, "hard_patchup", gamma=gamma, patchup_prob=1.0)
    x = tf.ones([2, width, width, channels])
    _, u = mixed_over_seeds(model, x, tf.one_hot([0, 1], 2), n)
    changed = 1.0 - u.astype(np.float64)

    def expected(g):
        return block_fraction(width, width, block, block_seed_rate(g, block, width, width))

    ok, why = mean_check(changed, expected(gamma))
    assert ok, why
    # se 0.0015 to 0.0026 here (1000 draws); gamma 0.25 or 0.35 moves the
    # share by 0.045 to 0.05, at least 17 se (a miss has probability < 1e-25):
    # both must be rejected, as must another block size and the unadjusted
    # seed rate.
    for wrong in (gamma - 0.05, gamma + 0.05):
        assert not mean_check(changed, expected(wrong))[0], (wrong, why)
    for other in {3, 5, 7} - {block}:
        wrong = block_fraction(width, width, other, block_seed_rate(gamma, other, width, width))
        assert not mean_check(changed, wrong)[0], (other, why)
    assert not mean_check(changed, block_fraction(width, width, block, gamma))[0], why
