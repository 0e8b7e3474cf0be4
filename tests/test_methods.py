"""`Method`: option validation, the per-batch plan, mixing at a position, the documented loss."""

import numpy as np
import pytest
import tensorflow as tf

from patchup_tf import methods, mixing
from patchup_tf.methods import METHODS, NUM_POSITIONS, Method
from patchup_tf.mixing import MixResult

from tests.test_mixing import np_bce_on_softmax, np_softmax_ce


def split(result):
    """`(features, result)` of a `Method.mix` result."""
    return result.features, result


def batch(n=4, h=16, w=16, c=3, k=3, seed=0):
    rng = np.random.RandomState(seed)
    x = rng.permutation(n * h * w * c).reshape(n, h, w, c).astype(np.float32) / (n * h * w * c)
    y = np.eye(k, dtype=np.float32)[np.arange(n) % k]
    return tf.constant(x), tf.constant(y)


def fixed_plan(position, n=4, lam=0.35, apply=True, seed=(11, 4)):
    active = np.zeros(NUM_POSITIONS, bool)
    if position is not None:
        active[position] = True
    return {
        "apply": tf.constant(apply),
        "active": tf.constant(active & apply),
        "lam": tf.constant(lam, tf.float32),
        "perm": tf.constant(np.roll(np.arange(n), 1), tf.int32),
        "seed": tf.constant(seed, tf.int32),
    }


def fold(plan, position):
    return tf.random.experimental.stateless_fold_in(plan["seed"], position)


# --------------------------------------------------------------- options
def test_paper_defaults():
    soft, hard = Method("soft_patchup"), Method("hard_patchup")
    assert (soft.gamma, soft.patchup_prob, soft.alpha, soft.block_size, soft.k) == (0.75, 1.0, 2.0, 7, 2)
    assert (hard.gamma, hard.patchup_prob, hard.alpha, hard.block_size, hard.k) == (0.5, 0.7, 2.0, 7, 2)
    assert soft.loss_params == (1.0, 1.0) and soft.options["loss"] == "bce"
    assert Method("mixup").alpha == 1.0
    assert (Method("manifold_mixup").alpha, Method("manifold_mixup").k) == (1.5, 2)
    assert Method("cutout").cutout == 16
    assert Method("cutmix").cutmix_prob == 0.4
    db = Method("dropblock")
    assert (db.block_size, db.keep_prob, db.k) == (7, 0.9, 2)
    assert Method().name == "vanilla"
    assert Method("soft_patchup", loss="ce").options["loss"] == "ce"
    assert Method("hard_patchup", loss_params=[2, 0.5]).loss_params == (2.0, 0.5)


def test_get_config_round_trip():
    m = Method("hard_patchup", gamma=0.4, k=3, loss_params=(2, 0.5))
    config = m.get_config()
    assert config["name"] == "hard_patchup" and config["gamma"] == 0.4
    again = Method(**config)
    assert again.get_config() == config


def test_hidden_positions():
    assert Method("soft_patchup", k=3).hidden_positions == (1, 2, 3)
    assert Method("soft_patchup", k=0).hidden_positions == ()
    assert Method("dropblock", k=1).hidden_positions == (1,)
    assert Method("manifold_mixup").hidden_positions == (1, 2)
    for name in ("vanilla", "mixup", "cutout", "cutmix"):
        assert Method(name).hidden_positions == ()


def test_unknown_method():
    with pytest.raises(ValueError, match="nope"):
        Method("nope")


@pytest.mark.parametrize(
    "name,option", [("mixup", "gamma"), ("vanilla", "alpha"), ("cutmix", "k"), ("cutout", "keep_prob"),
                    ("soft_patchup", "cutmix_prob"), ("dropblock", "gamma"), ("mixup", "typo")]
)
def test_option_not_for_the_method(name, option):
    with pytest.raises(ValueError, match=f"'{option}'"):
        Method(name, **{option: 0.5})


@pytest.mark.parametrize("k", [-1, 5, 2.0, True, "2", None])
@pytest.mark.parametrize("name", ["soft_patchup", "hard_patchup", "manifold_mixup"])
def test_bad_k(name, k):
    with pytest.raises(ValueError, match="k="):
        Method(name, k=k)


@pytest.mark.parametrize("k", [0, 5, -1])
def test_dropblock_bad_k(k):
    with pytest.raises(ValueError, match="k="):
        Method("dropblock", k=k)


@pytest.mark.parametrize("k", [0, 4])
def test_k_range_ends_accepted(k):
    assert Method("soft_patchup", k=k).k == k


@pytest.mark.parametrize(
    "name,key,value",
    [
        ("cutmix", "cutmix_prob", 1.5), ("cutmix", "cutmix_prob", -0.1), ("cutmix", "cutmix_prob", "0.4"),
        ("hard_patchup", "patchup_prob", 1.01), ("hard_patchup", "patchup_prob", float("nan")),
        ("soft_patchup", "gamma", 0), ("soft_patchup", "gamma", 1.5), ("soft_patchup", "gamma", "nan"),
        ("dropblock", "keep_prob", 0), ("dropblock", "keep_prob", -0.5), ("dropblock", "keep_prob", None),
        ("soft_patchup", "alpha", 0), ("hard_patchup", "alpha", -2.0), ("soft_patchup", "alpha", float("nan")),
        ("mixup", "alpha", float("nan")), ("mixup", "alpha", float("inf")), ("mixup", "alpha", "1"),
        ("soft_patchup", "block_size", 4), ("dropblock", "block_size", 0), ("dropblock", "block_size", 7.0),
        ("cutout", "cutout", -1), ("cutout", "cutout", 2.5),
        ("dropblock", "dropblock_all", "True"), ("dropblock", "dropblock_all", 1),
        ("soft_patchup", "loss_params", (1,)), ("soft_patchup", "loss_params", 3),
        ("soft_patchup", "loss_params", ("a", 1)), ("soft_patchup", "loss_params", (1, float("nan"))),
        ("vanilla", "loss", "mse"), ("mixup", "loss", None),
    ],
)
def test_bad_option_values(name, key, value):
    with pytest.raises(ValueError, match=f"{key}="):
        Method(name, **{key: value})


def test_mixup_alpha_zero_means_no_mixing():
    plan = Method("mixup", alpha=0.0).draw_plan(tf.constant([1, 2]), 4)
    assert float(plan["lam"]) == 1.0


# ------------------------------------------------------------------ plan
@pytest.mark.parametrize("name", METHODS)
def test_plan_structure_and_determinism(name):
    m = Method(name)
    a = m.draw_plan(tf.constant([3, 4]), 6)
    b = m.draw_plan(tf.constant([3, 4]), 6)
    switch = {m.spec.switch_key} - {None}  # e.g. mixup_cutmix's use_cutmix
    assert set(a) == {"apply", "active", "lam", "perm", "seed"} | switch
    for key in switch:
        assert a[key].dtype == tf.bool and a[key].shape == ()
    assert a["apply"].dtype == tf.bool and a["apply"].shape == ()
    assert a["active"].dtype == tf.bool and a["active"].shape == (NUM_POSITIONS,)
    assert a["lam"].dtype == tf.float32 and 0.0 <= float(a["lam"]) <= 1.0
    assert a["perm"].dtype == tf.int32 and sorted(a["perm"].numpy()) == list(range(6))
    assert a["seed"].dtype == tf.int32 and a["seed"].shape == (2,)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    graph = tf.function(lambda s: m.draw_plan(s, 6))(tf.constant([3, 4]))
    for key in a:
        np.testing.assert_array_equal(graph[key], a[key], err_msg=key)
    others = [m.draw_plan(tf.constant([s, 4]), 6) for s in range(5, 12)]
    assert any(not np.array_equal(o["perm"], a["perm"]) for o in others)
    assert any(not np.array_equal(o["seed"], a["seed"]) for o in others)


def test_never_applied_patchup_has_no_active_position():
    m = Method("hard_patchup", patchup_prob=0.0)
    for s in range(20):
        plan = m.draw_plan(tf.constant([s, 1]), 4)
        assert not bool(plan["apply"]) and not plan["active"].numpy().any()
    assert all(bool(Method("soft_patchup").draw_plan(tf.constant([s, 1]), 4)["apply"]) for s in range(20))


# ------------------------------------------------------------------- mix
def test_mix_cutout_at_input():
    m = Method("cutout", cutout=5)
    x, y = batch()
    plan = fixed_plan(0)
    out, state = split(m.mix(0, MixResult.clean(x, y), plan))
    np.testing.assert_array_equal(out, mixing.cutout(x, size=5, seed=fold(plan, 0)))
    assert (out.numpy() == 0).any()
    assert float(state.u) == 1.0 and state.y_mix is y


@pytest.mark.parametrize("name", ["cutmix", "soft_patchup", "hard_patchup"])
def test_mix_cutmix_at_input(name):
    # PatchUp's l = 0 is CutMix exactly as the cutmix row (with y_mix formed)
    m = Method(name)
    x, y = batch()
    plan = fixed_plan(0)
    out, state = split(m.mix(0, MixResult.clean(x, y), plan))
    exp = mixing.cutmix(x, y, lam=plan["lam"], perm=plan["perm"], seed=fold(plan, 0))
    np.testing.assert_array_equal(out, exp.features)
    u = float(state.u)
    assert u == float(exp.u) and 0 < u < 1
    np.testing.assert_array_equal(state.y_a, y)
    np.testing.assert_array_equal(state.y_b, tf.gather(y, plan["perm"]))
    np.testing.assert_allclose(state.y_mix, u * y.numpy() + (1 - u) * state.y_b.numpy(), rtol=1e-6)


@pytest.mark.parametrize(
    "shape,block", [((4, 32, 32, 2), 7), ((4, 16, 16, 3), 5), ((4, 8, 8, 3), 3), ((4, 4, 4, 2), 3),
                    ((4, 12, 20, 2), 3), ((4, 20, 16, 2), 5)]
)
@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_mix_patchup_hidden_block_rule(mode, shape, block):
    m = Method(f"{mode}_patchup", gamma=0.6)
    x, y = batch(*shape)
    plan = fixed_plan(2)
    out, state = split(m.mix(2, MixResult.clean(x, y), plan))
    exp = mixing.patchup(x, y, mode=mode, gamma=0.6, block_size=block, lam=plan["lam"],
                         perm=plan["perm"], seed=fold(plan, 2))
    np.testing.assert_array_equal(out, exp.features)
    for got, want in zip(state[1:5], (exp.y_a, exp.y_b, exp.y_mix, exp.u)):
        np.testing.assert_array_equal(got, want)
    lam = 0.35
    yp = tf.gather(y, plan["perm"]).numpy()
    want_b = yp if mode == "hard" else lam * y.numpy() + (1 - lam) * yp
    np.testing.assert_allclose(state.y_b, want_b, rtol=1e-6)


def test_mix_uses_gamma_option():
    x, y = batch()
    plan = fixed_plan(1)
    u_low = float(split(Method("hard_patchup", gamma=0.1).mix(1, MixResult.clean(x, y), plan))[1].u)
    u_high = float(split(Method("hard_patchup", gamma=0.9).mix(1, MixResult.clean(x, y), plan))[1].u)
    assert u_high < u_low


@pytest.mark.parametrize("shape,block", [((4, 16, 16, 2), 7), ((4, 6, 6, 2), 5), ((4, 4, 4, 2), 3), ((4, 6, 9, 2), 5)])
def test_mix_dropblock(shape, block):
    m = Method("dropblock", keep_prob=0.7)
    x, y = batch(*shape)
    plan = fixed_plan(1)
    out, state = split(m.mix(1, MixResult.clean(x, y), plan))
    np.testing.assert_array_equal(
        out, mixing.dropblock(x, keep_prob=0.7, block_size=block, seed=fold(plan, 1))
    )
    assert float(state.u) == 1.0


def test_positions_draw_different_masks():
    # one plan, two positions with same-shaped maps: independent masks
    m = Method("dropblock", keep_prob=0.7, block_size=3, k=2)
    x, y = batch(h=8, w=8)
    plan = fixed_plan(1)
    a = split(m.mix(1, MixResult.clean(x, y), plan))[0].numpy()
    b = split(m.mix(2, MixResult.clean(x, y), plan))[0].numpy()
    assert not np.array_equal(a == 0, b == 0)


@pytest.mark.parametrize("name,position", [("mixup", 0), ("manifold_mixup", 0), ("manifold_mixup", 2)])
def test_mix_mixup(name, position):
    m = Method(name)
    x, y = batch()
    plan = fixed_plan(position)
    out, state = split(m.mix(position, MixResult.clean(x, y), plan))
    perm = plan["perm"].numpy()
    np.testing.assert_allclose(out, 0.35 * x.numpy() + 0.65 * x.numpy()[perm], rtol=1e-6)
    assert float(state.u) == pytest.approx(0.35)
    np.testing.assert_allclose(state.y_mix, 0.35 * y.numpy() + 0.65 * y.numpy()[perm], rtol=1e-6)


# ------------------------------------------------------------------ loss
LOGITS = np.random.RandomState(5).normal(0, 2, (4, 3)).astype(np.float32)
NP_LOSS = {"bce": np_bce_on_softmax, "ce": np_softmax_ce}


@pytest.mark.parametrize("loss", ["bce", "ce"])
@pytest.mark.parametrize("name", ["soft_patchup", "hard_patchup"])
@pytest.mark.parametrize("position", [0, 1, 2])
def test_patchup_loss(name, position, loss):
    a, b = 2.0, 0.5
    m = Method(name, loss_params=(a, b), loss=loss)
    x, y = batch()
    plan = fixed_plan(position)
    _, state = split(m.mix(position, MixResult.clean(x, y), plan))
    u = float(state.u)
    assert 0 < u < 1
    L = NP_LOSS[loss]
    expected = a * u * L(LOGITS, state.y_a) + (1 - u) * L(LOGITS, state.y_b) + b * L(LOGITS, state.y_mix)
    got = float(m.loss(tf.constant(LOGITS), y, state, plan))
    assert got == pytest.approx(expected, rel=1e-5)
    # a non-applied PatchUp step is a vanilla step
    vanilla = float(m.loss(tf.constant(LOGITS), y, MixResult.clean(None, y), fixed_plan(None, apply=False)))
    assert vanilla == pytest.approx(L(LOGITS, y.numpy()), rel=1e-5)


@pytest.mark.parametrize("loss", ["bce", "ce"])
def test_cutmix_loss(loss):
    m = Method("cutmix", loss=loss)
    x, y = batch()
    plan = fixed_plan(0)
    _, state = split(m.mix(0, MixResult.clean(x, y), plan))
    u = float(state.u)
    L = NP_LOSS[loss]
    expected = u * L(LOGITS, y.numpy()) + (1 - u) * L(LOGITS, tf.gather(y, plan["perm"]).numpy())
    assert float(m.loss(tf.constant(LOGITS), y, state, plan)) == pytest.approx(expected, rel=1e-5)
    skipped = fixed_plan(None, apply=False)
    assert float(m.loss(tf.constant(LOGITS), y, MixResult.clean(None, y), skipped)) == pytest.approx(
        L(LOGITS, y.numpy()), rel=1e-5)


@pytest.mark.parametrize("loss", ["bce", "ce"])
@pytest.mark.parametrize("name", ["mixup", "manifold_mixup"])
def test_mixup_loss(name, loss):
    m = Method(name, loss=loss)
    x, y = batch()
    plan = fixed_plan(0)
    _, state = split(m.mix(0, MixResult.clean(x, y), plan))
    expected = NP_LOSS[loss](LOGITS, state.y_mix)
    assert float(m.loss(tf.constant(LOGITS), y, state, plan)) == pytest.approx(expected, rel=1e-5)
    assert not np.allclose(state.y_mix, y)


@pytest.mark.parametrize("name", ["vanilla", "cutout", "dropblock"])
def test_plain_losses(name):
    for loss in ("bce", "ce"):
        m = Method(name, loss=loss)
        y = tf.constant(np.eye(3, dtype=np.float32)[[0, 1, 2, 0]])
        got = float(m.loss(tf.constant(LOGITS), y, MixResult.clean(None, y), fixed_plan(None)))
        assert got == pytest.approx(NP_LOSS[loss](LOGITS, y.numpy()), rel=1e-5)


def test_bce_and_ce_differ():
    y = tf.constant(np.eye(3, dtype=np.float32)[[0, 1, 2, 0]])
    s = MixResult.clean(None, y)
    bce = float(Method("vanilla").loss(tf.constant(LOGITS), y, s, fixed_plan(None)))
    ce = float(Method("vanilla", loss="ce").loss(tf.constant(LOGITS), y, s, fixed_plan(None)))
    assert bce != pytest.approx(ce, rel=1e-2)


def test_module_constants():
    assert NUM_POSITIONS == 5
    assert set(METHODS) == set(methods.PAPER_DEFAULTS)


@pytest.mark.parametrize(
    "name,position",
    [("cutout", 0), ("soft_patchup", 0), ("soft_patchup", 2), ("dropblock", 1)],
)
def test_mix_under_xla_equals_eager(name, position):
    # training compiles the mixing (not the plan: Gamma has no XLA kernel) with XLA
    m = Method(name, **({"cutout": 5} if name == "cutout" else {}))
    x, y = batch(h=8, w=8)
    plan = m.draw_plan(tf.constant([9, 2]), 4)
    plan["active"] = tf.constant(np.arange(NUM_POSITIONS) == position)
    plan["lam"] = tf.constant(0.4)

    def run(x, y, plan):
        out, state = split(m.mix(position, MixResult.clean(x, y), plan))
        return (out, *state[1:5])

    eager = [t.numpy() for t in run(x, y, plan)]
    xla = [t.numpy() for t in tf.function(run, jit_compile=True)(x, y, plan)]
    assert not np.array_equal(eager[0], x.numpy())
    for e, c in zip(eager, xla):
        np.testing.assert_allclose(c, e, rtol=1e-6, atol=1e-7)
    # masks and boxes are identical: the same positions change
    np.testing.assert_array_equal(xla[0] != x.numpy(), eager[0] != x.numpy())
