"""Beyond the paper's recipe: label smoothing, Mixup/CutMix, mixing off at
the end, their command-line flags, and smoke runs under XLA, mixed
bfloat16 and a two-replica MirroredStrategy.

Statistical checks are at 4 standard errors (`tests/helpers/stats.py`);
their power is stated where they are made.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from patchup_tf import losses
from patchup_tf.app.experiment import config as flags
from patchup_tf.methods import NUM_POSITIONS, Method
from patchup_tf.mixing import MixResult
from patchup_tf.optimizer import TorchSGD
from patchup_tf.training import MixingModel, StopMixing
from tests.helpers.stats import assert_beta, assert_freq
from tests.helpers.tiny import NUM_CLASSES, data, make, tiny_model, weights
from tests.test_mixing import derangement, distinct_batch, np_bce_on_softmax, one_hot

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def spy_loss(model):
    """Records `(logits, targets, result, plan)` of every `method.loss` call."""
    calls = []
    loss = model.method.loss

    def recording(logits, targets, result, plan, weighted=False):
        calls.append((logits, targets, result, plan))
        return loss(logits, targets, result, plan, weighted=weighted)

    model.method.loss = recording
    return calls


# ------------------------------------------------------- label smoothing
def test_smooth_labels_formula_and_zero_is_no_op():
    y = tf.constant(one_hot([0, 2, 1], 4))
    np.testing.assert_allclose(losses.smooth_labels(y, 0.2), 0.8 * one_hot([0, 2, 1], 4) + 0.05,
                               rtol=1e-7)
    assert losses.smooth_labels(y, 0.0) is y
    assert Method("vanilla").smooth_targets(y) is y
    smoothed = Method("mixup", label_smoothing=0.1).smooth_targets(y).numpy()
    np.testing.assert_allclose(smoothed.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(smoothed.max(axis=1), 0.9 + 0.025, rtol=1e-6)


@pytest.mark.parametrize("value", [1.0, 1.5, -0.1, float("nan"), float("inf"), "0.1", True, None])
def test_label_smoothing_hostile_values(value):
    with pytest.raises(ValueError, match="label_smoothing="):
        Method("vanilla", label_smoothing=value)
    with pytest.raises(ValueError, match="label_smoothing="):
        losses.smooth_labels(tf.zeros([1, 2]), value)


@pytest.mark.parametrize("name", ["vanilla", "cutout"])
def test_label_smoothing_is_a_common_option(name):
    assert Method(name, label_smoothing=0.3).options["label_smoothing"] == 0.3
    assert Method(name).options["label_smoothing"] == 0.0


def test_targets_are_smoothed_before_mixing():
    eps = 0.2
    model = make("mixup", seed=4, label_smoothing=eps)
    calls = spy_loss(model)
    x, y = data(8)
    model.train_step((tf.constant(x), tf.constant(y)))
    logits, targets, result, plan = calls[-1]
    smooth = (1 - eps) * one_hot(y, NUM_CLASSES) + eps / NUM_CLASSES
    np.testing.assert_allclose(targets, smooth, rtol=1e-6)
    lam, perm = float(plan["lam"]), plan["perm"].numpy()
    np.testing.assert_allclose(result.y_mix, lam * smooth + (1 - lam) * smooth[perm], rtol=1e-6)
    # Mixup's loss is L(y_mix), on the smoothed, mixed targets.
    expected = np_bce_on_softmax(logits.numpy(), lam * smooth + (1 - lam) * smooth[perm])
    assert float(model.method.loss(logits, targets, result, plan)) == pytest.approx(expected,
                                                                                     rel=1e-5)


def test_the_sample_weight_column_is_not_smoothed():
    eps = 0.1
    model = make("cutmix", seed=4, label_smoothing=eps, cutmix_prob=1.0)
    calls = spy_loss(model)
    x, y = data(8)
    w = np.linspace(0.5, 2.0, 8).astype("float32")
    model.train_step((tf.constant(x), tf.constant(y), tf.constant(w)))
    _, targets, result, plan = calls[-1]
    targets = targets.numpy()
    np.testing.assert_array_equal(targets[:, -1], w)
    np.testing.assert_allclose(targets[:, :-1], (1 - eps) * one_hot(y, NUM_CLASSES) + eps / 4,
                               rtol=1e-6)
    perm = plan["perm"].numpy()
    np.testing.assert_array_equal(result.y_b.numpy()[:, -1], w[perm])


def test_vanilla_step_loss_and_metrics_on_hard_labels():
    eps = 0.1
    keras.utils.set_random_seed(5)  # the margin below depends on the initial weights
    model = make("vanilla", seed=5, label_smoothing=eps)
    x, y = data(8)
    logits = model(x, training=True).numpy()  # the step's forward pass (BN on the batch)
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    smooth = (1 - eps) * one_hot(y, NUM_CLASSES) + eps / NUM_CLASSES
    got = history.history["loss"][0]
    assert got == pytest.approx(np_bce_on_softmax(logits, smooth), rel=1e-6)
    # The check tells the targets apart: the hard targets' loss is further
    # away than 10 times its tolerance (1.4e-5 with these weights, 25 times).
    assert abs(got - np_bce_on_softmax(logits, one_hot(y, NUM_CLASSES))) > 10 * 1e-6 * got
    # The logged accuracy compares with the hard labels.
    assert history.history["accuracy"][0] == pytest.approx(np.mean(logits.argmax(1) == y))
    # Evaluation: softmax cross-entropy on the hard labels.
    z = model.predict(x, verbose=0).astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    ce = -np.mean((z - np.log(np.exp(z).sum(axis=1, keepdims=True)))[np.arange(8), y])
    assert model.evaluate(x, y, verbose=0)[0] == pytest.approx(ce, rel=1e-5)


def test_label_smoothing_zero_is_bit_identical_to_unset():
    x, y = data(16)
    runs = []
    start = make("soft_patchup", seed=3).get_weights()
    for options in ({}, {"label_smoothing": 0.0}):
        model = make("soft_patchup", seed=3, **options)
        model.set_weights(start)
        h = model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
        runs.append((h.history["loss"], weights(model)))
    assert runs[0][0] == runs[1][0]
    for a, b in zip(runs[0][1], runs[1][1]):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------ mixup_cutmix
def test_mixup_cutmix_defaults_and_refusals():
    m = Method("mixup_cutmix")
    o = m.options
    assert (o["mixup_alpha"], o["cutmix_alpha"], o["switch_prob"], o["prob"], o["per_sample"]) == (
        0.8, 1.0, 0.5, 1.0, False)
    assert m.acts_at(0) and not any(m.acts_at(p) for p in range(1, NUM_POSITIONS))
    for option in ("k", "alpha", "cutmix_prob", "gamma"):
        with pytest.raises(ValueError, match=f"'{option}'"):
            Method("mixup_cutmix", **{option: 1})


@pytest.mark.parametrize("key,value", [
    ("switch_prob", 1.5), ("switch_prob", -0.1), ("switch_prob", "0.5"), ("prob", 1.01),
    ("prob", float("nan")), ("mixup_alpha", float("nan")), ("mixup_alpha", float("inf")),
    ("cutmix_alpha", "1"), ("cutmix_alpha", None), ("per_sample", 1)])
def test_mixup_cutmix_hostile_values(key, value):
    with pytest.raises(ValueError, match=f"{key}="):
        Method("mixup_cutmix", **{key: value})


def draw_many(method, n, batch=4):
    seeds = tf.stack([tf.range(n), tf.fill([n], 31)], axis=1)

    @tf.function
    def draw(seeds):
        def one(s):
            plan = method.draw_plan(s, batch)
            return plan["apply"], plan["use_cutmix"], plan["lam"]

        return tf.map_fn(one, seeds, fn_output_signature=(tf.bool, tf.bool, tf.float32),
                         parallel_iterations=64)

    return tuple(t.numpy() for t in draw(seeds))


def test_mixup_cutmix_switch_prob_and_laws_per_batch():
    """20 000 plans: the CutMix share is switch_prob (0.3; 4 se = 0.013, a
    share 0.05 off is 15 se away and must be rejected), the mixing share is
    prob (0.6; likewise), lam follows Beta(mixup_alpha) on Mixup steps
    (about 14 000: a 10 % wrong alpha is 8 se away and must be rejected) and
    Beta(cutmix_alpha) on CutMix steps (about 6 000, no power claim)."""
    n = 20_000
    m = Method("mixup_cutmix", switch_prob=0.3, prob=0.6, mixup_alpha=0.4, cutmix_alpha=2.0)
    apply, use, lam = draw_many(m, n)
    assert_freq(use.sum(), n, 0.3, what="use_cutmix")
    assert_freq(apply.sum(), n, 0.6, what="apply")
    assert_beta(lam[~use], 0.4)
    assert_beta(lam[use], 2.0, nearby=None)
    # The switch and the mixing draw are independent: CutMix share among
    # the applied steps (about 12 000; 4 se = 0.017).
    assert_freq(use[apply].sum(), int(apply.sum()), 0.3, nearby=0.06, what="use | apply")


@pytest.mark.parametrize("use", [True, False])
@pytest.mark.parametrize("loss", ["bce", "ce"])
def test_mixup_cutmix_mix_and_pair_loss(use, loss):
    n = 6
    m = Method("mixup_cutmix", loss=loss)
    x, y = tf.constant(distinct_batch(n, 12, 12, 3)), tf.constant(one_hot(np.arange(n) % 3, 3))
    plan = dict(m.draw_plan(tf.constant([4, 4]), n))
    plan["use_cutmix"] = tf.constant(use)
    plan["lam"] = tf.constant(0.55)
    plan["apply"] = tf.constant(True)
    plan["active"] = tf.constant(np.arange(NUM_POSITIONS) == 0)
    result = m.mix(0, MixResult.clean(x, y), plan)
    # The same plan (lam, perm, the position's seed) through the op taken.
    ref = Method("cutmix" if use else "mixup").mix(0, MixResult.clean(x, y), plan)
    for a, b in zip(result[:5], ref[:5]):
        np.testing.assert_array_equal(a, b)
    if not use:
        assert float(result.u) == pytest.approx(0.55)
    logits = tf.constant(np.random.default_rng(0).normal(size=(n, 3)).astype("float32"))
    base = losses.LOSS_FUNCTIONS[loss]
    u = float(result.u)
    expected = u * float(base(logits, result.y_a)) + (1 - u) * float(base(logits, result.y_b))
    assert float(m.loss(logits, y, result, plan)) == pytest.approx(expected, rel=1e-6)


def test_mixup_cutmix_prob_zero_never_mixes():
    m = Method("mixup_cutmix", prob=0.0)
    for s in range(20):
        plan = m.draw_plan(tf.constant([s, 1]), 4)
        assert not bool(plan["apply"]) and not plan["active"].numpy().any()


# ---------------------------------------------------------- mixing off
ALL = ("soft_patchup", "hard_patchup", "cutmix", "mixup", "manifold_mixup", "cutout",
       "dropblock", "mixup_cutmix")


@pytest.mark.parametrize("name,options", [
    *[(n, {}) for n in ALL],
    ("soft_patchup", {"per_sample": True, "label_smoothing": 0.1}),
    ("cutmix", {"per_sample": True, "cutmix_prob": 1.0})])
def test_steps_after_stop_mixing_are_vanilla_steps(name, options):
    x, y = data(16)
    mixed = make(name, seed=3, **options)
    plain = make("vanilla", seed=3, label_smoothing=options.get("label_smoothing", 0.0))
    plain.set_weights(mixed.get_weights())
    h_mixed = mixed.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False,
                        callbacks=[StopMixing(0)])
    h_plain = plain.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)
    assert h_mixed.history["loss"] == h_plain.history["loss"]
    for a, b in zip(mixed.get_weights(), plain.get_weights()):
        np.testing.assert_array_equal(a, b)


class CountingModel(MixingModel):
    traces = 0

    def train_step(self, data):
        type(self).traces += 1  # runs only while tracing
        return super().train_step(data)


class SwitchLog(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seen = []

    def on_train_batch_begin(self, batch, logs=None):
        if batch == 0:
            self.seen.append(self.model.mixing_enabled)


def test_stop_mixing_epochs_resume_and_no_retrace():
    x, y = data(16)
    CountingModel.traces = 0
    model = tiny_model("soft_patchup", seed=0, cls=CountingModel, k=4)
    model.compile(optimizer=TorchSGD(0.05))
    model.optimizer.build(model.trainable_variables)
    log = SwitchLog()
    model.fit(x, y, batch_size=8, epochs=4, verbose=0, callbacks=[StopMixing(2), log])
    assert log.seen == [True, True, False, False]
    assert model.mixing_enabled  # fit over: back on
    first = CountingModel.traces
    assert first <= 2  # as test_training's test_train_step_is_traced_once
    # A resumed run at epoch >= at_epoch is plain from its first step.
    log = SwitchLog()
    model.fit(x, y, batch_size=8, initial_epoch=3, epochs=5, verbose=0,
              callbacks=[StopMixing(2), log])
    assert log.seen == [False, False]
    log = SwitchLog()
    model.fit(x, y, batch_size=8, initial_epoch=0, epochs=2, verbose=0,
              callbacks=[StopMixing(1), log])
    assert log.seen == [True, False]
    assert CountingModel.traces == first  # flipping the switch retraced nothing


def test_the_switch_is_not_a_weight_and_is_not_saved(tmp_path):
    model = make("soft_patchup", seed=0)
    assert len(model.get_weights()) == len(model.inference_model().get_weights())
    assert all("mixing_on" not in v.name for v in model.variables)
    model.set_mixing(False)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.mixing_enabled and not model.mixing_enabled


@pytest.mark.parametrize("value", [-1, 1.5, True, "2", None])
def test_stop_mixing_hostile_values(value):
    with pytest.raises(ValueError, match="at_epoch="):
        StopMixing(value)


def test_stop_mixing_needs_a_mixing_model_and_set_mixing_a_bool():
    inputs = keras.Input((4,))
    plain = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    plain.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="MixingModel"):
        plain.fit(np.zeros((4, 4)), np.zeros((4, 2)), verbose=0, callbacks=[StopMixing(1)])
    with pytest.raises(ValueError, match="enabled="):
        make("mixup").set_mixing(1)


# ------------------------------------------------------------------ flags
def parse(argv):
    args = flags.build_parser().parse_args(argv)
    method = flags.resolve_method(args)
    options = flags.method_options(args, method)
    flags.check_values(args, method, options)
    return args, method, options


def name(argv):
    args, method, _ = parse(argv)
    return flags.experiment_name(args, method, flags.resolve_schedule(args)[0])


def test_the_new_flags_reach_the_method():
    args, method, options = parse([
        "--method", "mixup_cutmix", "--switch_prob", "0.3", "--mixup_alpha", "0.4",
        "--cutmix_alpha", "2", "--prob", "0.9", "--per_sample", "True",
        "--label_smoothing", "0.1", "--mix_off_epoch", "5"])
    assert options == {"switch_prob": 0.3, "mixup_alpha": 0.4, "cutmix_alpha": 2.0, "prob": 0.9,
                       "per_sample": True, "label_smoothing": 0.1, "loss": "bce"}
    assert args.mix_off_epoch == 5
    m = Method(method, **options)
    assert m.per_sample and m.options["label_smoothing"] == 0.1
    _, _, options = parse(["--method", "soft_patchup", "--per_sample"])  # the bare flag
    assert options["per_sample"] is True
    _, _, options = parse(["--method", "dropblock", "--per_sample", "False"])
    assert options["per_sample"] is False
    # Unset, they are not options the command sets (the table's defaults hold).
    _, _, options = parse(["--method", "mixup"])
    assert options == {"loss": "bce"}


@pytest.mark.parametrize("method", flags.METHODS)
def test_default_values_keep_the_folder_name(method):
    argv = ["--method", method]
    extra = ["--label_smoothing", "0"]
    if "per_sample" in Method(method).options:
        extra += ["--per_sample", "False"]
    assert name(argv) == name(argv + extra)
    assert "label_smoothing" not in name(argv) and "per_sample" not in name(argv)
    assert "mix_off" not in name(argv)


def test_other_values_give_other_folders():
    base = ["--method", "soft_patchup"]
    names = {name(base), name(base + ["--per_sample", "True"]),
             name(base + ["--label_smoothing", "0.1"]),
             name(base + ["--label_smoothing", "0.2"]), name(base + ["--mix_off_epoch", "7"]),
             name(base + ["--mix_off_epoch", "8"])}
    assert len(names) == 6
    mc = ["--method", "mixup_cutmix"]
    names = {name(mc), name(mc + ["--switch_prob", "0.3"]), name(mc + ["--mixup_alpha", "0.2"]),
             name(mc + ["--cutmix_alpha", "0.5"]), name(mc + ["--prob", "0.5"]),
             name(mc + ["--per_sample", "True"])}
    assert len(names) == 6
    assert name(mc) == name(mc + ["--switch_prob", "0.5", "--mixup_alpha", "0.8",
                                  "--cutmix_alpha", "1.0", "--prob", "1.0"])


@pytest.mark.parametrize("argv, unused", [
    (["--method", "cutout", "--per_sample", "True"], "--per_sample"),
    (["--method", "vanilla", "--per_sample", "True"], "--per_sample"),
    (["--method", "mixup", "--switch_prob", "0.5"], "--switch_prob"),
    (["--method", "soft_patchup", "--mixup_alpha", "1.0"], "--mixup_alpha"),
    (["--method", "cutmix", "--cutmix_alpha", "1.0"], "--cutmix_alpha"),
    (["--method", "cutmix", "--prob", "0.5"], "--prob"),
    (["--method", "mixup_cutmix", "--alpha", "1.0"], "--alpha"),
    (["--method", "mixup_cutmix", "--cutmix_prob", "0.5"], "--cutmix_prob"),
])
def test_new_flags_the_method_does_not_use_are_refused(argv, unused):
    with pytest.raises(flags.FlagError, match=f"{unused} is not used by --method"):
        parse(argv)


def test_mix_off_epoch_is_refused_for_vanilla():
    with pytest.raises(flags.FlagError, match="--mix_off_epoch is not used by --method vanilla"):
        parse(["--mix_off_epoch", "3"])


@pytest.mark.parametrize("argv, flag", [
    (["--label_smoothing", "1"], "--label_smoothing"),
    (["--label_smoothing", "-0.1"], "--label_smoothing"),
    (["--method", "mixup", "--label_smoothing", "nan"], "--label_smoothing"),
    (["--method", "mixup_cutmix", "--switch_prob", "1.5"], "--switch_prob"),
    (["--method", "mixup_cutmix", "--mixup_alpha", "inf"], "--mixup_alpha"),
    (["--method", "mixup_cutmix", "--cutmix_alpha", "nan"], "--cutmix_alpha"),
    (["--method", "mixup_cutmix", "--prob", "-0.1"], "--prob"),
    (["--method", "mixup", "--mix_off_epoch", "-1"], "--mix_off_epoch"),
])
def test_out_of_range_new_flags_name_their_flag(argv, flag):
    with pytest.raises(flags.FlagError, match=flag):
        parse(argv)


def test_the_command_line_exits_2_naming_the_flag(capsys):
    from patchup_tf.app.cli.train import main

    for argv, flag in ((["--method", "cutout", "--per_sample", "True"], "--per_sample"),
                       (["--method", "mixup", "--label_smoothing", "1.0"], "--label_smoothing"),
                       (["--method", "mixup_cutmix", "--switch_prob", "2"], "--switch_prob")):
        assert main(argv) == 2
        assert flag in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        flags.build_parser().parse_args(["--per_sample", "maybe"])
    assert e.value.code == 2


def test_mix_off_epoch_reaches_the_training_run(tmp_path, monkeypatch):
    """`--mix_off_epoch 1`: the run's first epoch mixes, the second does not."""
    from patchup_tf.app.experiment import run as experiment

    seen = []
    original = MixingModel.set_mixing

    def recording(self, enabled):
        seen.append(enabled)
        return original(self, enabled)

    monkeypatch.setattr(MixingModel, "set_mixing", recording)
    argv = ["--dataset", "digits", "--arch", "wrn28_2", "--method", "soft_patchup",
            "--epochs", "2", "--labels_per_class", "2", "--valid_labels_per_class", "1",
            "--batch_size", "10", "--mix_off_epoch", "1", "--per_sample", "True",
            "--label_smoothing", "0.1", "--verbose", "0", "--root_dir", str(tmp_path),
            "--precision", "float32"]
    if "--deterministic" in flags.build_parser()._option_string_actions:
        argv += ["--deterministic", "False"]  # keep this process's kernels as they are
    experiment.run(flags.RunConfig.from_argv(argv))
    assert seen == [True, False, True]  # epoch 0, epoch 1, the end of fit
    (folder,) = os.listdir(tmp_path)
    assert folder.endswith("_per_sample_label_smoothing_0.1_mix_off_epoch_1")


# ------------------------------------------------ XLA, bfloat16, replicas
@pytest.mark.parametrize("name", ["soft_patchup", "mixup_cutmix", "cutmix"])
def test_xla_step_with_per_sample_and_label_smoothing(name):
    """The XLA-compiled step (plan drawn outside XLA) trains as the plain
    step does: the same plans, losses within float32 rounding."""
    x, y = data(16)
    runs = []
    options = {"soft_patchup": {"k": 4}, "cutmix": {"cutmix_prob": 1.0}}.get(name, {})
    for jit in (False, True):
        model = tiny_model(name, seed=6, per_sample=True, label_smoothing=0.1, **options)
        if runs:
            model.set_weights(runs[0][1])
        model.compile(optimizer=TorchSGD(0.05), jit_compile=jit)
        model.optimizer.build(model.trainable_variables)
        start = model.get_weights()
        h = model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
        runs.append((h.history["loss"], start))
    assert np.isfinite(runs[1][0]).all()
    np.testing.assert_allclose(runs[1][0], runs[0][0], rtol=1e-4)


def test_mixed_bfloat16_with_per_sample_and_label_smoothing():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    mixed = []
    model = make("soft_patchup", seed=1, per_sample=True, label_smoothing=0.1)
    mix = model.method.mix

    def recording(position, result, plan):
        new = mix(position, result, plan)
        mixed.append((position, new.features.dtype.name, tuple(new.u.shape)))
        return new

    model.method.mix = recording
    x, y = data(12, seed=7)
    before = weights(model)
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert max(float(np.abs(a - b).max()) for a, b in zip(before, weights(model))) > 0
    assert all(v.dtype == "float32" for v in model.trainable_variables)
    for position, dtype, u_shape in mixed:
        assert dtype == ("bfloat16" if position >= 1 else "float32") and u_shape == (4,)


MIRRORED = r"""
import json, os, sys
sys.path.insert(0, {repo!r})
import tensorflow as tf
cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
import numpy as np
from patchup_tf.optimizer import TorchSGD
from patchup_tf.training import StopMixing
from tests.helpers.tiny import data, tiny_model

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
out = {{"replicas": strategy.num_replicas_in_sync}}
x, y = data(16)
for name, options in (("soft_patchup", {{"k": 4}}), ("mixup_cutmix", {{}})):
    with strategy.scope():
        model = tiny_model(name, seed=3, per_sample=True, label_smoothing=0.1, **options)
        model.compile(optimizer=TorchSGD(0.05))
        model.optimizer.build(model.trainable_variables)
    shapes = strategy.experimental_local_results(strategy.run(
        lambda: tf.shape(model.draw_plan(tf.zeros([4, 32, 32, 3]))["lam"])))
    seen = []

    class Log(tf.keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            pass

        def on_train_batch_begin(self, batch, logs=None):
            if batch == 0:
                seen.append(model.mixing_enabled)

    h = model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False,
                  callbacks=[StopMixing(1), Log()])
    out[name] = {{"loss": h.history["loss"], "lam_shapes": [s.numpy().tolist() for s in shapes],
                  "switch": seen}}
print("RESULT " + json.dumps(out))
"""


def test_mirrored_strategy_with_per_sample_label_smoothing_and_stop_mixing():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", MIRRORED.format(repo=REPO)], capture_output=True,
                          text=True, timeout=600, env=env, cwd=REPO)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stdout[-3000:] + done.stderr[-5000:]
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["replicas"] == 2
    for name in ("soft_patchup", "mixup_cutmix"):
        r = result[name]
        assert np.isfinite(r["loss"]).all(), r
        assert r["lam_shapes"] == [[4], [4]]  # each replica: one lam per image of its half
        assert r["switch"] == [True, False]


# ------------------------------------------------------------------ attach
@pytest.mark.parametrize("method, options", [
    ("soft_patchup", {"k": 3}), ("dropblock", {"k": 2}), ("mixup_cutmix", {})])
def test_attach_passes_the_new_options_through(method, options):
    from patchup_tf.attachment import attach

    keras.utils.set_random_seed(0)
    net = keras.Sequential([
        keras.Input((32, 32, 3)),
        keras.layers.Conv2D(4, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu"),
        keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu"),
        keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(NUM_CLASSES),
    ])
    model = attach(net, method, seed=1, per_sample=True, label_smoothing=0.1, **options)
    assert model.method.per_sample and model.method.options["label_smoothing"] == 0.1
    model.compile(optimizer=TorchSGD(0.01), run_eagerly=True)
    calls = spy_loss(model)
    x, y = data(8)
    loss = model.train_on_batch(x, y, return_dict=True)["loss"]
    assert np.isfinite(loss)
    _, targets, result, plan = calls[-1]
    np.testing.assert_allclose(targets, 0.9 * one_hot(y, NUM_CLASSES) + 0.1 / NUM_CLASSES,
                               rtol=1e-6)
    assert plan["lam"].shape == (8,) and result.u.shape == (8,)
