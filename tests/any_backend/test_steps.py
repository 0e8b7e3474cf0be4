"""What consecutive training steps do, on whichever Keras backend runs, in
each of its step modes (TensorFlow: `tf.function`, and XLA for the update;
JAX: compiled and not; PyTorch: eager).

At learning rate 0 on one fixed batch the weights never move (the micro
network has no batch norm), so each step's logged loss is a function of the
step's plan alone: it must be the loss the documented rule gives for that
step (`draw_plan(step_seed(step))`), the plans must change from step to
step, one seed must give one sequence, and a step with mixing switched off
must be a plain step.
"""

import keras
import numpy as np
import pytest
from keras import ops

from patchup_tf.optimizer import TorchSGD
from patchup_tf.training import MixingModel, StopMixing
from tests.any_backend.test_model import batch, micro_layers, npy
from tests.helpers.reference import one_hot

STEPS = 4
MODES = {"tensorflow": (False, True), "jax": (True, False), "torch": (False,)}[
    keras.backend.backend()]


def frozen(method="soft_patchup", seed=0, jit_compile=False, **options):
    """The micro network at learning rate 0 (no momentum, no L2)."""
    if method != "vanilla":
        options.setdefault("k", 2)
    if method == "soft_patchup":
        options.setdefault("patchup_prob", 1.0)
    model = MixingModel(*micro_layers(), method=method, method_options=options, seed=seed)
    model.compile(optimizer=TorchSGD(0.0, momentum=0.0, l2=0.0), jit_compile=jit_compile)
    return model


def step_losses(model, epochs=STEPS, callbacks=(), x=None, y=None):
    """The loss of each step: one fixed batch a step, one step an epoch."""
    if x is None:
        x, y = batch(8)
    history = model.fit(x, y, batch_size=len(x), epochs=epochs, verbose=0, shuffle=False,
                        callbacks=list(callbacks))
    return np.array(history.history["loss"], np.float64)


def expected_loss(model, step, x, y):
    """The loss of step `step` by the documented rule: the plan drawn from
    `step_seed(step)`, the network run on it, the method's loss."""
    targets = one_hot(y, model.num_classes)
    # the step as the optimizer counts it (`iterations`, int64)
    step = ops.convert_to_tensor(step, dtype=model.optimizer.iterations.dtype)
    plan = model.draw_plan(x, model.step_seed(step))
    logits, result = model.mixed_forward(x, targets, plan)
    return float(npy(model.method.loss(logits, ops.convert_to_tensor(targets), result, plan)))


@pytest.mark.parametrize("jit_compile", MODES)
def test_each_step_draws_its_own_plan_by_the_rule(jit_compile):
    model = frozen(jit_compile=jit_compile)
    x, y = batch(8)
    losses = step_losses(model)
    assert int(npy(model.optimizer.iterations)) == STEPS
    expected = [expected_loss(model, step, x, y) for step in range(STEPS)]
    np.testing.assert_allclose(losses, expected, rtol=2e-5)
    # a new plan each step: the step's losses are not one value repeated
    assert len(set(np.round(expected, 5))) == STEPS, expected


def test_step_seeds_differ_from_step_to_step():
    model = frozen()
    steps = [ops.convert_to_tensor(step, dtype="int64") for step in range(8)]
    seeds = {tuple(npy(model.step_seed(step)).tolist()) for step in steps}
    assert len(seeds) == 8


@pytest.mark.parametrize("jit_compile", MODES)
def test_one_seed_gives_one_sequence(jit_compile):
    first = step_losses(frozen(seed=7, jit_compile=jit_compile))
    again = step_losses(frozen(seed=7, jit_compile=jit_compile))
    other = step_losses(frozen(seed=8, jit_compile=jit_compile))
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other, rtol=1e-4)


def vanilla_loss(weights, jit_compile):
    """The loss of a vanilla model's step with these weights."""
    model = frozen("vanilla", jit_compile=jit_compile)
    model.set_weights(weights)
    return float(step_losses(model, epochs=1)[0])


@pytest.mark.parametrize("jit_compile", MODES)
def test_steps_after_set_mixing_false_are_clean_steps(jit_compile):
    model = frozen(jit_compile=jit_compile)
    mixed = step_losses(model, epochs=2)
    model.set_mixing(False)
    clean = step_losses(model, epochs=3)
    plain = vanilla_loss(model.get_weights(), jit_compile)
    np.testing.assert_allclose(clean, plain, rtol=1e-6)
    assert not np.any(np.isclose(mixed, plain, rtol=1e-4)), (mixed, plain)
    model.set_mixing(True)
    again = step_losses(model, epochs=2)
    assert not np.any(np.isclose(again, plain, rtol=1e-4)), (again, plain)


@pytest.mark.parametrize("jit_compile", MODES)
def test_stop_mixing_makes_the_later_steps_clean(jit_compile):
    model = frozen(jit_compile=jit_compile)
    losses = step_losses(model, epochs=4, callbacks=[StopMixing(2)])
    plain = vanilla_loss(model.get_weights(), jit_compile)
    np.testing.assert_allclose(losses[2:], plain, rtol=1e-6)
    assert not np.any(np.isclose(losses[:2], plain, rtol=1e-4)), (losses, plain)
    assert model.mixing_enabled  # on again after fit


BAD_LABELS = {
    "equal to K": (3, "received a larger label"),
    "above K": (7, "received a larger label"),
    "negative": (-1, "received a negative label"),
    "not integral": (0.5, "non-integral float labels"),
}


@pytest.mark.parametrize("case", BAD_LABELS)
@pytest.mark.parametrize("jit_compile", MODES)
def test_labels_outside_the_classes_are_refused(case, jit_compile):
    value, message = BAD_LABELS[case]
    model = frozen(jit_compile=jit_compile)
    x, y = batch(8)
    y = y.astype("float32" if isinstance(value, float) else "int32")
    y[5] = value  # one bad label among good ones
    with pytest.raises(Exception, match=f"Invalid labels: .*{message}"):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)
