"""Model level: what each method makes the network see, and the targets it
is scored on, computed here from the plan and compared by value.

The network is a small CNN without BatchNorm and with tanh activations (so
hidden features are nonzero and a dropped unit is recognisable), with
mixing points at positions 1..4 on 32, 32, 16 and 8-wide maps that record
what they receive and pass on, and a model class that records the images
the network is called on. Outside a training step the mixing points are the
identity, so `model(x, training=True)` is the clean forward pass; every
comparison below is against it and against the network applied to the
mixed batch computed here by hand.

For each method, one plan with mixing on (the probability options at 1,
the active position set by hand where the method draws it, `lam` and the
permutation fixed) is run through `MixingModel.mixed_forward`, the forward
pass of `train_step`; the last tests run one real `fit` step.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from patchup_tf.layers import MixingPoint
from patchup_tf.optimizer import TorchSGD
from patchup_tf.training import MixingModel
from tests.helpers.tiny import NUM_CLASSES, data, max_diff, weights

N = 8
LAM = 0.35
PERM = np.roll(np.arange(N), 1)  # every image gets another image's partner
ATOL = 1e-5  # float32 round-off of a forward pass through four convolutions
CHANGED = 1e-3  # smallest change that counts as "the network saw another batch"

# Options with mixing always on (and every hidden position allowed).
ALWAYS = {
    "vanilla": {},
    "mixup": {"alpha": 1.0},
    "manifold_mixup": {"k": 4},
    "cutout": {},
    "cutmix": {"cutmix_prob": 1.0},
    "dropblock": {"k": 4, "keep_prob": 0.7, "dropblock_all": True},
    "soft_patchup": {"k": 4, "patchup_prob": 1.0},
    "hard_patchup": {"k": 4, "patchup_prob": 1.0},
}


class Probe(MixingPoint):
    """A mixing point that keeps what it received and what it passed on (eager)."""

    def call(self, inputs, training=None):
        self.seen_in = inputs
        self.seen_out = super().call(inputs, training=training)
        return self.seen_out


class Recording(MixingModel):
    """Keeps the images the network is called on (eager)."""

    def call(self, inputs, training=None, mask=None, **kwargs):
        self.seen_images = inputs
        return super().call(inputs, training=training, mask=mask, **kwargs)


def layers(point_cls=Probe):
    inputs = keras.Input((32, 32, 3), name="images")
    x = keras.layers.Conv2D(4, 3, padding="same", name="stem")(inputs)
    x = point_cls(1, name="mix_1")(x)
    x = keras.layers.Activation("tanh")(x)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="tanh", name="stage1")(x)
    x = point_cls(2, name="mix_2")(x)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="tanh", name="stage2")(x)
    x = point_cls(3, name="mix_3")(x)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="tanh", name="stage3")(x)
    x = point_cls(4, name="mix_4")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    logits = keras.layers.Dense(NUM_CLASSES, name="logits")(x)
    return inputs, logits


_MODELS = {}


def model_for(method):
    """One recording model per method, all with the same initial weights."""
    if method not in _MODELS:
        keras.utils.set_random_seed(3)
        _MODELS[method] = Recording(*layers(), method=method, method_options=ALWAYS[method],
                                    seed=0)
    return _MODELS[method]


def batch():
    x, y = data(N, seed=4)
    return tf.constant(x), tf.one_hot(y, NUM_CLASSES)


def plan_for(model, x, positions=None):
    """The model's plan for seed (5, 6), with `lam` and `perm` fixed and, if
    given, `positions` made the active ones."""
    plan = dict(model.draw_plan(x, seed=tf.constant([5, 6])))
    assert bool(plan["apply"]), "the probability options are 1: every plan applies"
    if positions is not None:
        plan["active"] = tf.constant(np.isin(np.arange(5), positions))
    plan["lam"] = tf.constant(LAM, tf.float32)
    plan["perm"] = tf.constant(PERM, tf.int32)
    return plan


def points(model):
    return {layer.position: layer for layer in model.layers if isinstance(layer, Probe)}


def tail(model, position):
    """The network from the output of mixing point `position` to the logits."""
    return keras.Model(model.get_layer(f"mix_{position}").output, model.output)


def run(method, positions=None):
    """Clean forward pass, then the mixed one; returns what both saw."""
    model = model_for(method)
    x, y = batch()
    clean = model(x, training=True).numpy()
    clean_in = {p: point.seen_in.numpy() for p, point in points(model).items()}
    plan = plan_for(model, x, positions)
    logits, state = model.mixed_forward(x, y, plan)
    y_a, y_b, y_mix, u = (np.asarray(v) for v in (state.y_a, state.y_b, state.y_mix, state.u))
    seen = {p: (point.seen_in.numpy(), point.seen_out.numpy())
            for p, point in points(model).items()}
    return dict(model=model, x=x.numpy(), y=y.numpy(), plan=plan, clean=clean,
                clean_in=clean_in, logits=logits.numpy(), images=model.seen_images.numpy(),
                seen=seen, y_a=y_a, y_b=y_b, y_mix=y_mix, u=float(u))


def assert_changed(a, b, what):
    assert np.abs(a - b).max() > CHANGED, f"{what}: the same as without mixing"


def assert_logits_of(r, images):
    """The logits are the network's on `images` and differ from the clean ones."""
    expected = r["model"](tf.constant(images), training=True).numpy()
    np.testing.assert_allclose(r["logits"], expected, rtol=0, atol=ATOL)
    assert_changed(r["logits"], r["clean"], "logits")


def assert_hidden_untouched(r, except_at=()):
    for p, (seen_in, seen_out) in r["seen"].items():
        if p not in except_at:
            np.testing.assert_array_equal(seen_out, seen_in, err_msg=f"position {p}")


def boxes(changed):
    """`(rows, cols)` of the one rectangle where `changed` (H, W) is True."""
    rows, cols = np.flatnonzero(changed.any(axis=1)), np.flatnonzero(changed.any(axis=0))
    assert rows.size and cols.size, "nothing changed"
    rows, cols = np.arange(rows[0], rows[-1] + 1), np.arange(cols[0], cols[-1] + 1)
    rectangle = np.zeros_like(changed)
    rectangle[np.ix_(rows, cols)] = True
    np.testing.assert_array_equal(changed, rectangle, err_msg="not one rectangle")
    return rows, cols


# ------------------------------------------------------------------ vanilla
def test_vanilla_sees_the_clean_batch():
    r = run("vanilla")
    assert not r["plan"]["active"].numpy().any()
    np.testing.assert_array_equal(r["images"], r["x"])
    np.testing.assert_allclose(r["logits"], r["clean"], rtol=0, atol=ATOL)
    assert_hidden_untouched(r)
    for t in (r["y_a"], r["y_b"], r["y_mix"]):
        np.testing.assert_array_equal(t, r["y"])
    assert r["u"] == 1.0


# ---------------------------------------------------------- at the input
@pytest.mark.parametrize("method", ["mixup", "manifold_mixup"])
def test_mixup_mixes_the_images(method):
    # Mixup always acts at the input; Manifold Mixup when the plan draws 0.
    r = run(method, positions=None if method == "mixup" else [0])
    np.testing.assert_array_equal(r["plan"]["active"].numpy(), [True] + [False] * 4)
    x, y = r["x"], r["y"]
    mixed = LAM * x + (1 - LAM) * x[PERM]
    np.testing.assert_allclose(r["images"], mixed, rtol=0, atol=1e-6)
    assert_logits_of(r, mixed)
    assert_hidden_untouched(r)
    np.testing.assert_array_equal(r["y_a"], y)
    np.testing.assert_array_equal(r["y_b"], y[PERM])
    np.testing.assert_allclose(r["y_mix"], LAM * y + (1 - LAM) * y[PERM], atol=1e-6)
    assert_changed(r["y_mix"], y, "targets")
    assert r["u"] == pytest.approx(LAM)


@pytest.mark.parametrize("method", ["cutmix", "soft_patchup", "hard_patchup"])
def test_cutmix_pastes_one_box_into_the_images(method):
    # CutMix always acts at the input; PatchUp's position 0 is CutMix.
    r = run(method, positions=None if method == "cutmix" else [0])
    np.testing.assert_array_equal(r["plan"]["active"].numpy(), [True] + [False] * 4)
    x, y, images = r["x"], r["y"], r["images"]
    changed = (images != x).any(axis=-1)  # (N, H, W)
    # one box, the same for every image, filled from the partner
    np.testing.assert_array_equal(changed, np.broadcast_to(changed[0], changed.shape))
    rows, cols = boxes(changed[0])
    inside = np.zeros((32, 32), bool)
    inside[np.ix_(rows, cols)] = True
    np.testing.assert_array_equal(images[:, inside], x[PERM][:, inside])
    np.testing.assert_array_equal(images[:, ~inside], x[:, ~inside])
    # the box's side: cut = floor(32 sqrt(1 - lam)) = 25, the rows (and the
    # columns) [c - 12, c + 12) clipped to the image: 12 to 24 of them
    cut = int(np.floor(32 * np.sqrt(1 - LAM)))
    for side in (rows.size, cols.size):
        assert cut // 2 <= side <= 2 * (cut // 2), (side, cut)
    u = 1 - rows.size * cols.size / 32**2
    assert r["u"] == pytest.approx(u, abs=1e-6)
    assert_logits_of(r, images)
    assert_hidden_untouched(r)
    np.testing.assert_array_equal(r["y_a"], y)
    np.testing.assert_array_equal(r["y_b"], y[PERM])
    np.testing.assert_allclose(r["y_mix"], u * y + (1 - u) * y[PERM], atol=1e-6)
    assert_changed(r["y_mix"], y, "targets")


def test_cutout_cuts_one_hole_per_image():
    r = run("cutout")
    np.testing.assert_array_equal(r["plan"]["active"].numpy(), [True] + [False] * 4)
    x, images = r["x"], r["images"]
    holes = (images == 0).all(axis=-1)
    np.testing.assert_array_equal(images[~holes], x[~holes])
    corners = set()
    for i in range(N):
        rows, cols = boxes(holes[i])
        # size 16: rows [c - 8, c + 8) clipped, so 8 to 16 rows (and columns)
        assert 8 <= rows.size <= 16 and 8 <= cols.size <= 16, (i, rows, cols)
        corners.add((rows[0], cols[0]))
    assert len(corners) > 1, "every image got the same hole"
    assert_logits_of(r, images)
    assert_hidden_untouched(r)
    for t in (r["y_a"], r["y_b"], r["y_mix"]):  # Cutout leaves the targets alone
        np.testing.assert_array_equal(t, r["y"])


# ---------------------------------------------------- at hidden positions
@pytest.mark.parametrize("position", [1, 2, 3, 4])
@pytest.mark.parametrize("method", ["manifold_mixup", "soft_patchup", "hard_patchup"])
def test_hidden_mixing_at_one_position(method, position):
    r = run(method, positions=[position])
    x, y = r["x"], r["y"]
    np.testing.assert_array_equal(r["images"], x)  # the images are left alone
    for p in range(1, position + 1):  # upstream of the mixing: clean features
        np.testing.assert_allclose(r["seen"][p][0], r["clean_in"][p], rtol=0, atol=ATOL)
    h, out = r["seen"][position]
    partner = h[PERM]
    if method == "manifold_mixup":
        expected = LAM * h + (1 - LAM) * partner
        y_b, u = y[PERM], LAM
        y_mix = LAM * y + (1 - LAM) * y[PERM]
    else:
        # one (H, W, C) block mask for the whole batch; inside it the
        # partner's features (hard) or their Mixup with lam (soft)
        holes = (out != h).any(axis=0)
        assert 0 < holes.mean() < 1
        patch = partner if method == "hard_patchup" else LAM * h + (1 - LAM) * partner
        expected = np.where(holes, patch, h)
        y_b = y[PERM] if method == "hard_patchup" else LAM * y + (1 - LAM) * y[PERM]
        u = 1 - holes.mean()
        y_mix = u * y + (1 - u) * y_b
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)
    assert_changed(out, h, f"features at {position}")
    assert_hidden_untouched(r, except_at=[position])
    np.testing.assert_allclose(r["logits"], tail(r["model"], position)(out).numpy(),
                               rtol=0, atol=ATOL)
    assert_changed(r["logits"], r["clean"], "logits")
    np.testing.assert_array_equal(r["y_a"], y)
    np.testing.assert_allclose(r["y_b"], y_b, atol=1e-6)
    assert r["u"] == pytest.approx(u, abs=1e-6)
    np.testing.assert_allclose(r["y_mix"], y_mix, atol=1e-6)
    assert_changed(r["y_mix"], y, "targets")


def test_dropblock_drops_blocks_at_every_hidden_position():
    r = run("dropblock")  # dropblock_all: positions 1..k act in every plan
    np.testing.assert_array_equal(r["plan"]["active"].numpy(), [False] + [True] * 4)
    np.testing.assert_array_equal(r["images"], r["x"])
    for p in range(1, 5):
        h, out = r["seen"][p]
        # Nonzero features (a convolution of the images; tanh of
        # convolutions) except where blocks dropped upstream zero a whole
        # receptive field: there the mask cannot be read off.
        known = h != 0
        assert known.mean() > 0.9 and (known.all() if p == 1 else True)
        np.testing.assert_array_equal(out[~known], 0)
        kept = out[known] != 0
        # (keep_prob 0.7: about 0.3 dropped on the 32- and 16-wide maps; 7-blocks
        # on the 8-wide one leave only some 6 % of the units)
        assert 0.01 < kept.mean() < 0.95, (p, kept.mean())
        # kept units scaled by size / (number kept), the others 0
        scale = out[known][kept] / h[known][kept]
        np.testing.assert_allclose(scale, scale[0], rtol=1e-5)
        assert kept.sum() <= out.size / scale[0] <= kept.sum() + (~known).sum() + 1e-3
        if p == 1:
            mask = out != 0
            np.testing.assert_allclose(out, h * mask * (mask.size / mask.sum()), rtol=1e-5)
            # a mask per image and per channel
            assert not np.array_equal(mask[0], mask[1])
            assert not np.array_equal(mask[..., 0], mask[..., 1])
    np.testing.assert_allclose(r["logits"], tail(r["model"], 4)(r["seen"][4][1]).numpy(),
                               rtol=0, atol=ATOL)
    assert_changed(r["logits"], r["clean"], "logits")
    for t in (r["y_a"], r["y_b"], r["y_mix"]):  # DropBlock leaves the targets alone
        np.testing.assert_array_equal(t, r["y"])


# --------------------------------------------------------- one fit step
def _fit_model(method, seed):
    keras.utils.set_random_seed(3)
    model = MixingModel(*layers(MixingPoint), method=method, method_options=ALWAYS[method],
                        seed=seed)
    model.compile(optimizer=TorchSGD(0.1))
    model.optimizer.build(model.trainable_variables)
    return model


def _seed_at_input(method, x):
    """A model seed whose first step's plan acts at the input (dropblock: anywhere)."""
    probe = _fit_model(method, 0)
    for seed in range(200):
        probe.seed = seed
        active = probe.draw_plan(x)["active"].numpy()
        if active[0] or (method == "dropblock" and active.any()):
            return seed
    raise AssertionError(method)


@pytest.mark.parametrize("method", [m for m in ALWAYS if m != "vanilla"])
def test_one_fit_step_differs_from_vanilla(method):
    """From the same weights, the first training step of each method with its
    mixing on (at the input where the method may act there) ends elsewhere
    than vanilla's."""
    x, y = data(N, seed=4)
    model = _fit_model(method, _seed_at_input(method, x))
    vanilla = _fit_model("vanilla", 0)
    np.testing.assert_array_equal(model.get_weights()[0], vanilla.get_weights()[0])
    before = weights(model)
    for m in (model, vanilla):
        m.fit(x, y, batch_size=N, epochs=1, shuffle=False, verbose=0)
    assert max_diff(weights(vanilla), before) > 1e-4
    assert max_diff(weights(model), weights(vanilla)) > 1e-4


@pytest.mark.parametrize("method", ["mixup", "manifold_mixup"])
def test_one_fit_step_is_the_step_on_the_mixed_batch(method):
    """The first fit step equals a step written out here: the loss (BCE on
    softmax, the PyTorch original's) of the network on lam x + (1-lam) x[perm]
    against lam y + (1-lam) y[perm], with lam and perm from the step's plan."""
    x, y = data(N, seed=4)
    model = _fit_model(method, _seed_at_input(method, x))
    by_hand = _fit_model("vanilla", 0)
    plan = model.draw_plan(x)  # the plan of step 0
    lam, perm = float(plan["lam"]), plan["perm"].numpy()
    assert 0.05 < lam < 0.95 and (perm != np.arange(N)).any()
    targets = np.eye(NUM_CLASSES, dtype="float32")[y]
    mixed_x = lam * x + (1 - lam) * x[perm]
    mixed_y = lam * targets + (1 - lam) * targets[perm]
    with tf.GradientTape() as tape:
        logits = tf.cast(by_hand(mixed_x, training=True), tf.float64)
        p = tf.nn.softmax(logits)
        t = tf.constant(mixed_y, tf.float64)
        loss = -tf.reduce_mean(t * tf.math.log(p) + (1 - t) * tf.math.log(1 - p))
    grads = tape.gradient(loss, by_hand.trainable_variables)
    by_hand.optimizer.apply([tf.cast(g, tf.float32) for g in grads], by_hand.trainable_variables)
    history = model.fit(x, y, batch_size=N, epochs=1, shuffle=False, verbose=0)
    assert history.history["loss"][0] == pytest.approx(float(loss), rel=1e-5)
    assert max_diff(weights(model), weights(by_hand)) < 1e-6
    # and it is not the step on the clean batch
    clean = _fit_model("vanilla", 0)
    clean.fit(x, y, batch_size=N, epochs=1, shuffle=False, verbose=0)
    assert max_diff(weights(model), weights(clean)) > 1e-4
