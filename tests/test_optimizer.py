"""`TorchSGD` against PyTorch's SGD by hand, and the step schedule / recipe."""

import keras
import numpy as np
import pytest

from patchup_tf.optimizer import TorchSGD
from patchup_tf.training import recipe, step_lr
from tests.helpers.tiny import data, tiny_model

LRS = [0.1, 0.1, 0.1, 0.01, 0.01, 0.002]  # two drops, as the step schedule makes


def torch_sgd(p, grads, lrs, momentum, nesterov, wd):
    """torch.optim.SGD(momentum, nesterov, weight_decay=wd), written out."""
    p = p.astype("float64")
    buf, trajectory = None, []
    for grad, lr in zip(grads, lrs):
        g = grad + wd * p
        buf = g.copy() if buf is None else momentum * buf + g
        p = p - lr * (g + momentum * buf if nesterov else buf)
        trajectory.append(p)
    return trajectory


def run(optimizer, p, grads, lrs, coupled_wd=0.0):
    """Applies `grads` (plus `coupled_wd * p`, computed here) one step at a time."""
    var = keras.Variable(p)
    trajectory = []
    for grad, lr in zip(grads, lrs):
        optimizer.learning_rate = lr
        g = grad + coupled_wd * var.numpy()
        optimizer.apply([keras.ops.convert_to_tensor(g)], [var])
        trajectory.append(var.numpy().astype("float64"))
    return trajectory


def problem(seed=0):
    rng = np.random.default_rng(seed)
    p = rng.normal(size=(3, 5)).astype("float32")
    grads = [rng.normal(size=(3, 5)).astype("float32") for _ in LRS]
    return p, grads


@pytest.mark.parametrize(
    "momentum, nesterov, wd",
    [(0.9, True, 1e-4), (0.9, False, 1e-4), (0.9, True, 0.05), (0.5, False, 0.0), (0.0, False, 1e-2)],
)
def test_torch_sgd_matches_pytorch_update_across_lr_drops(momentum, nesterov, wd):
    p, grads = problem()
    expected = torch_sgd(p, grads, LRS, momentum, nesterov, wd)
    got = run(TorchSGD(0.1, momentum=momentum, nesterov=nesterov, l2=wd), p, grads, LRS)
    for step, (a, b) in enumerate(zip(got, expected)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"step {step}")


def test_torch_sgd_defaults_are_the_documented_ones():
    """TorchSGD() with no arguments: lr 0.1, momentum 0.9, Nesterov, l2 1e-4
    (the paper's `torch.optim.SGD(lr=0.1, momentum=0.9, nesterov=True,
    weight_decay=1e-4)`), checked on the updates themselves."""
    p, grads = problem(2)
    optimizer = TorchSGD()
    var = keras.Variable(p)
    got = []
    for grad in grads:
        optimizer.apply([keras.ops.convert_to_tensor(grad)], [var])
        got.append(var.numpy().astype("float64"))
    expected = torch_sgd(p, grads, [0.1] * len(grads), 0.9, True, 1e-4)
    for step, (a, b) in enumerate(zip(got, expected)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"step {step}")
    # Each default matters: the first step alone is -0.1 (1 + 0.9) (g + 1e-4 p)
    # with Nesterov and -0.1 (g + 1e-4 p) without.
    g0 = grads[0] + 1e-4 * p.astype("float64")
    np.testing.assert_allclose(got[0], p - 0.19 * g0, rtol=1e-5, atol=1e-6)
    plain = torch_sgd(p, grads, [0.1] * len(grads), 0.9, False, 1e-4)
    assert np.abs(got[-1] - plain[-1]).max() > 1e-2
    assert (optimizer.momentum, optimizer.nesterov, optimizer.l2) == (0.9, True, 1e-4)
    assert float(optimizer.learning_rate) == pytest.approx(0.1)


@pytest.mark.parametrize("nesterov", [True, False])
def test_keras_sgd_differs_after_the_lr_drop(nesterov):
    """Keras' SGD keeps the lr inside its buffer: with the same coupled L2 it
    agrees with PyTorch until the lr changes, then it does not."""
    p, grads = problem(1)
    expected = torch_sgd(p, grads, LRS, 0.9, nesterov, 1e-4)
    keras_sgd = run(keras.optimizers.SGD(0.1, momentum=0.9, nesterov=nesterov),
                    p, grads, LRS, coupled_wd=1e-4)
    for step in range(3):  # lr 0.1 throughout: identical
        np.testing.assert_allclose(keras_sgd[step], expected[step], rtol=1e-5, atol=1e-6)
    assert np.abs(keras_sgd[3] - expected[3]).max() > 1e-2


def test_l2_covers_every_trainable_variable_in_a_model():
    """Coupled decay on BN scales and biases too: with zero loss gradient the
    update of every variable is `-lr * (1 + mu) * wd * p` on the first step."""
    model = tiny_model("vanilla")
    optimizer = TorchSGD(0.1, momentum=0.9, nesterov=True, l2=0.01)
    variables = model.trainable_variables
    assert any("gamma" in v.path for v in variables) and any("bias" in v.path for v in variables)
    before = [v.numpy() for v in variables]
    optimizer.apply([keras.ops.zeros(v.shape) for v in variables], variables)
    for v, p in zip(variables, before):
        np.testing.assert_allclose(v.numpy(), p * (1 - 0.1 * 1.9 * 0.01), rtol=1e-6, atol=1e-7)


def test_torch_sgd_arguments_and_config():
    optimizer = TorchSGD(0.05, momentum=0.8, nesterov=False, l2=3e-4)
    config = optimizer.get_config()
    assert (config["momentum"], config["nesterov"], config["l2"]) == (0.8, False, 3e-4)
    clone = TorchSGD.from_config(config)
    assert (clone.momentum, clone.nesterov, clone.l2) == (0.8, False, 3e-4)
    assert float(clone.learning_rate) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="weight_decay"):
        TorchSGD(weight_decay=1e-4)
    with pytest.raises(ValueError, match="momentum=-0.1"):
        TorchSGD(momentum=-0.1)
    with pytest.raises(ValueError, match="l2"):
        TorchSGD(l2="big")


# --------------------------------------------------------------- schedule
def test_step_lr():
    lr_at = step_lr(0.1, [2, 4], [0.1, 0.2])
    np.testing.assert_allclose([lr_at(e) for e in range(5)], [0.1, 0.1, 0.01, 0.01, 0.002])
    assert lr_at(1000) == pytest.approx(0.002)
    assert step_lr(0.5)(7) == 0.5
    # The paper's PreActResNet and WRN schedules.
    pre = step_lr(0.1, (500, 1000, 1500), (0.1, 0.1, 0.1))
    assert [pre(e) for e in (0, 499, 500, 999, 1000, 1500, 1999)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 1e-4, 1e-4])
    wrn = step_lr(0.1, (200, 300), (0.1, 0.1))
    assert [wrn(e) for e in (199, 200, 299, 300)] == pytest.approx([0.1, 0.01, 0.01, 0.001])


@pytest.mark.parametrize(
    "schedule, factors, named",
    [([2, 4], [0.1], "same length"), ([4, 2], [0.1, 0.1], "ascending")],
)
def test_step_lr_rejects_bad_schedules(schedule, factors, named):
    with pytest.raises(ValueError, match=named):
        step_lr(0.1, schedule, factors)


def test_recipe_is_the_papers():
    optimizer, scheduler = recipe()
    assert isinstance(optimizer, TorchSGD)
    assert float(optimizer.learning_rate) == pytest.approx(0.1)
    assert (optimizer.momentum, optimizer.nesterov, optimizer.l2) == (0.9, True, 1e-4)
    assert isinstance(scheduler, keras.callbacks.LearningRateScheduler)
    assert [scheduler.schedule(e, 0.1) for e in (0, 500, 1000, 1500)] == pytest.approx(
        [0.1, 0.01, 0.001, 1e-4])


def test_recipe_scheduler_sets_the_lr_at_each_epoch_start():
    optimizer, scheduler = recipe(schedule=(1, 2), step_factors=(0.1, 0.5))
    model = tiny_model("vanilla")
    model.compile(optimizer=optimizer)
    seen = []

    class Spy(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))

    x, y = data(8)
    history = model.fit(x, y, batch_size=4, epochs=3, verbose=0, callbacks=[scheduler, Spy()])
    np.testing.assert_allclose(seen, [0.1, 0.1, 0.01, 0.01, 0.005, 0.005], rtol=1e-6)
    np.testing.assert_allclose(history.history["learning_rate"], [0.1, 0.01, 0.005], rtol=1e-6)
