"""The training engine: a functional Keras model whose training steps mix.

`MixingModel` is an ordinary functional model (build it from `inputs,
outputs`, as `keras.Model`). Each training step draws the batch's plan once,
mixes the input images (position 0), lets the model's `MixingPoint` layers
mix hidden features, and `compute_loss` forms the method's loss from the
targets the mixing produced. On JAX and PyTorch the step is Keras' own
(`train_step` only opens the batch's mixing context around it); on
TensorFlow the step is this module's, so that the plan's Beta draws (which
have no XLA kernel) stay outside the XLA-compiled part and `MirroredStrategy`
replicas scale their losses. `predict`, `evaluate`, `save` and `export` see
the plain network. The recipe (PyTorch's SGD, the step schedule) is here too.
"""

import bisect
import contextlib
import math
import random
import sys

import keras
import numpy as np
from keras import ops

from patchup_tf import draws
from patchup_tf.heads import check_logits
from patchup_tf.layers.mixing_point import (
    MixingContext,
    MixingPoint,
    current_context,
    mixing_context,
)
from patchup_tf.losses import softmax_ce
from patchup_tf.methods import Method
from patchup_tf.optimizer import TorchSGD
from patchup_tf.rules import check_epoch, check_seed


def _mixing_positions(model):
    return sorted(
        layer.position for layer in model._flatten_layers() if isinstance(layer, MixingPoint)
    )


def _tf():
    import tensorflow as tf  # only ever under the TensorFlow backend

    return tf


def _replicas():
    """The number of replicas a step's loss is shared by (TF's strategy)."""
    if not draws.on_tensorflow():
        return 1
    return _tf().distribute.get_strategy().num_replicas_in_sync


@keras.saving.register_keras_serializable(package="patchup")
class MixingModel(keras.Model):
    """A functional model trained with one of the methods.

    Args:
        *args, **kwargs: as `keras.Model` (functional: `inputs, outputs`).
            The outputs must be logits `(N, K)`.
        method: one of `patchup_tf.methods.METHODS`, default `"vanilla"`;
            with none of `method`, `method_options`, `seed` given, a model
            built over the outputs of a `MixingModel`'s graph (what
            `keras.models.clone_model` does) takes that model's three.
        method_options: dict of that method's options (`alpha, gamma,
            patchup_prob, block_size, cutmix_prob, cutout, keep_prob,
            dropblock_all, k, loss, loss_params, label_smoothing,
            per_sample, ...`); unset ones take the paper's settings.
        seed: int; the per-step plans are a pure function of `(seed, step,
            replica)` (the step: the optimizer's `iterations`, saved with
            it), so a seed reproduces a run, across restarts too.

    Methods acting on hidden features need `MixingPoint` layers at positions
    `1..k` of the model. `set_mixing(False)` (or the `StopMixing` callback)
    makes every training step a plain one.
    """

    def __init__(self, *args, method=None, method_options=None, seed=None, **kwargs):
        super().__init__(*args, **kwargs)
        if method is None and method_options is None and seed is None:
            method, method_options, seed = _copied_settings(self.outputs)
        self.method = Method(method or "vanilla", **dict(method_options or {}))
        self._mixing_switch = _Switch()
        seed = check_seed(seed)
        self.seed = random.SystemRandom().randrange(2**31) if seed is None else seed
        check_logits(self)
        present = set(_mixing_positions(self))
        missing = [p for p in self.method.hidden_positions if p not in present]
        if missing:
            raise ValueError(
                f"Method '{self.method.name}' mixes at positions "
                f"{list(self.method.hidden_positions)} but the model has no "
                f"MixingPoint layer for {missing}. Place "
                "`patchup_tf.layers.MixingPoint(position)` after the stem and "
                "stages, or lower `k`."
            )

    # ------------------------------------------------------------ helpers
    @property
    def mixing_enabled(self):
        """False once mixing is switched off (`set_mixing`, `StopMixing`)."""
        return self._mixing_switch.enabled

    def set_mixing(self, enabled):
        """Switches mixing on or off for the following training steps.

        Off, every step is a plain step: no position mixes, the targets are
        the batch's own and the method's loss reads them (`L(y)`). On
        TensorFlow a non-trainable variable read by the step (flipping it
        retraces nothing); on JAX a flip recompiles the step once. It is not
        saved; `StopMixing` sets it at every epoch start.
        """
        if not isinstance(enabled, bool):
            raise ValueError("Invalid value received for argument `enabled`. Expected True or "
                             f"False. Received: enabled={enabled!r}")
        changed = self._mixing_switch.set(enabled)
        if changed and keras.backend.backend() == "jax" and self.train_function is not None:
            # JAX's compiled step holds the switch as a constant.
            self.make_train_function(force=True)

    def _switched(self, plan):
        """`plan` with `apply` and `active` forced False while mixing is off."""
        on = self._mixing_switch.read()
        return {**plan, "apply": ops.logical_and(plan["apply"], on),
                "active": ops.logical_and(plan["active"], on)}

    @property
    def num_classes(self):
        return self.outputs[0].shape[-1]

    def _targets(self, y):
        """One-hot float32 targets from integer labels `(N,)` / `(N, 1)` (also
        integral floats) or from target distributions `(N, K)`.

        Labels outside `[0, K)` and non-integral float labels raise, also
        inside compiled steps (TensorFlow: `InvalidArgumentError`; JAX: a
        runtime error carrying the message).
        """
        k = self.num_classes
        y = ops.convert_to_tensor(y)
        shape = tuple(y.shape)
        if len(shape) == 1 or (len(shape) == 2 and shape[-1] == 1 and k != 1):
            labels = _checked_labels(ops.reshape(y, (-1,)), k)
            return ops.one_hot(labels, k, dtype="float32")
        if len(shape) != 2 or shape[-1] != k:
            raise ValueError(
                f"Invalid targets: expected integer labels (N,) or one-hot targets "
                f"(N, {k}) for a model with {k} classes. "
                f"Received targets of shape {shape}."
            )
        return ops.cast(y, "float32")

    def _images(self, x):
        """`x` checked against the model's input shape, as float32 if integer
        (e.g. uint8 images): every method mixes in floating point."""
        expected = tuple(self.inputs[0].shape[1:])
        got = tuple(x.shape[1:])
        if len(got) != len(expected) or any(
            e is not None and g is not None and e != g for e, g in zip(expected, got)
        ):
            raise ValueError(
                f"Invalid images: the model takes (N, {', '.join(map(str, expected))}). "
                f"Received images of shape {tuple(x.shape)}."
            )
        x = ops.convert_to_tensor(x)
        if keras.backend.standardize_dtype(x.dtype).startswith(("float", "bfloat")):
            return x
        return ops.cast(x, "float32")

    def step_seed(self, step=None):
        """int32[2] seed of this step and replica: `f(seed, iterations, replica)`
        (`step`: the iterations, default the optimizer's)."""
        step = self.optimizer.iterations if step is None else step
        return draws.step_seed(self.seed, step)

    def draw_plan(self, x, seed=None):
        """The batch's plan (see `Method.draw_plan`), from `step_seed()` by default."""
        return self.method.draw_plan(
            self.step_seed() if seed is None else seed, ops.shape(x)[0]
        )

    @contextlib.contextmanager
    def _mixing(self, x, targets, plan, weighted=False):
        """Opens the step's `MixingContext`; yields the images mixed at
        position 0 (where the plan says), for the network to be called on."""
        context = MixingContext(self.method, plan, targets, weighted=weighted)
        x = context.mix(0, x)
        with mixing_context(context):
            yield x

    def mixed_forward(self, x, targets, plan):
        """Runs the training forward pass under `plan`.

        Returns `(logits, MixResult)`: its `features` are the input images
        the network received (mixed at position 0 where the plan says), its
        targets and `u` what the loss reads after every position.
        """
        with self._mixing(x, targets, plan) as x:
            logits = self(x, training=True)
            result = current_context().result
        return logits, result._replace(features=x)

    def _step_inputs(self, data, step=None):
        """`(images, targets, plan, weighted, (x, y, sample_weight))` of a batch.

        Sample weights (from `sample_weight` or `class_weight`) travel with
        the targets as their last column: a mixed sample's weight is mixed
        like its targets. Label smoothing (`label_smoothing`) acts on the
        one-hot targets before any mixing.
        """
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        images = self._images(x)
        targets = self.method.smooth_targets(self._targets(y))
        weighted = sample_weight is not None
        if weighted:
            weights = ops.reshape(ops.cast(sample_weight, "float32"), (-1, 1))
            targets = ops.concatenate([targets, weights], axis=-1)
        plan = self._switched(self.draw_plan(images, self.step_seed(step)))
        return images, targets, plan, weighted, (x, y, sample_weight)

    # ------------------------------------------------------------- steps
    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """In a training step: the method's loss on the targets the mixing
        produced (`sum(w_i l_i) / N` with weights, Keras'
        `sum_over_batch_size`). Otherwise (evaluation): softmax
        cross-entropy on the clean labels."""
        context = current_context()
        if training and context is not None:
            return self.method.loss(y_pred, context.targets, context.result, context.plan,
                                    weighted=context.weighted)
        weights = None if sample_weight is None else ops.cast(sample_weight, "float32")
        # Keras' TensorFlow step multiplies by the replicas it divides by here.
        return softmax_ce(y_pred, self._targets(y), sample_weight=weights) / _replicas()

    def train_step(self, *args):
        """One mixed step: the plan, the mixing, the method's loss, the update.

        The metrics see the labels as passed and the logits. On JAX
        (`args = (state, data)`) and PyTorch, Keras' own step runs inside
        the batch's mixing context; on TensorFlow, `_tf_train_step`.
        """
        if draws.on_tensorflow():
            return self._tf_train_step(*args)
        *state, data = args
        step = _iterations_in(self.optimizer, *state)
        images, targets, plan, weighted, (_, y, sample_weight) = self._step_inputs(data, step)
        with self._mixing(images, targets, plan, weighted) as mixed:
            data = keras.utils.pack_x_y_sample_weight(mixed, y, sample_weight)
            return super().train_step(*state, data)

    def _tf_train_step(self, data):
        images, targets, plan, weighted, (x, y, sample_weight) = self._step_inputs(data)
        # The plan is drawn outside XLA: TF's Gamma sampler has no XLA kernel.
        loss, logits = self._compute_step(images, targets, plan, weighted)
        # Batches are equal (fit drops no data, but the trainer's do): the
        # plain mean of the batch losses.
        self._loss_tracker.update_state(loss)
        return self.compute_metrics(images, y, logits, sample_weight)

    def _apply_gradients(self, x, targets, plan, weighted=False):
        """TensorFlow: forward, loss, backward and update for one planned batch.

        Returns `(loss, logits)`; the loss is NaN if anything in the step
        (inputs, loss, gradients, updated weights) was not finite.
        """
        tf = _tf()
        with tf.GradientTape() as tape:
            with self._mixing(x, targets, plan, weighted) as mixed:
                logits = self(mixed, training=True)
                loss = self.compute_loss(mixed, None, logits, None, training=True)
            # Gradients are summed over replicas: scale to the global mean.
            scaled = self.optimizer.scale_loss(loss / _replicas())
        grads = tape.gradient(scaled, self.trainable_variables)
        self.optimizer.apply(grads, self.trainable_variables)
        # The updated weights carry any non-finite gradient (w - lr * NaN).
        finite = _all_finite([x, loss, *self.trainable_variables])
        return tf.where(finite, loss, float("nan")), logits

    @property
    def _compute_step(self):
        if getattr(self, "_xla_step", None) is None:
            self._xla_step = (
                _tf().function(self._apply_gradients, jit_compile=True)
                if getattr(self, "_mixing_jit", False) else self._apply_gradients
            )
        return self._xla_step

    def test_step(self, *args):
        """Softmax cross-entropy on the clean labels (`loss`) and the compiled
        metrics, in inference mode (Keras' step, on the images as floats)."""
        *state, data = args
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        data = keras.utils.pack_x_y_sample_weight(self._images(x), y, sample_weight)
        return super().test_step(*state, data)

    def fit(self, *args, callbacks=None, **kwargs):
        """As `keras.Model.fit`; a non-finite step stops training (the step
        reports a NaN loss and `StopOnNonFinite` ends the run) unless the
        callbacks already hold a `keras.callbacks.TerminateOnNaN`."""
        callbacks = list(callbacks or [])
        if not any(isinstance(c, keras.callbacks.TerminateOnNaN) for c in callbacks):
            callbacks.append(StopOnNonFinite())
        return super().fit(*args, callbacks=callbacks, **kwargs)

    def compile(self, optimizer="rmsprop", jit_compile="auto", metrics=None, **kwargs):
        """As `keras.Model.compile`, without `loss` (the method forms it).

        `metrics` and `weighted_metrics` work as in any Keras model and see
        the clean labels in the form they were passed (integer labels or
        one-hot targets) and the logits; `"accuracy"` is always among them.
        `jit_compile=True` compiles each step with XLA (JAX: the whole step,
        JAX's default; TensorFlow: the forward, backward and update, the
        plan being drawn outside XLA, which has no kernel for its Beta
        draws; `"auto"` is XLA on GPUs only). PyTorch trains eagerly: it
        refuses `jit_compile=True`.
        """
        if kwargs.get("loss") is not None:
            raise ValueError(
                "MixingModel forms its own loss (the method's, `loss='bce'` or "
                "'ce' in method_options); compile it without `loss`. "
                f"Received: loss={kwargs['loss']!r}"
            )
        if jit_compile is True and keras.backend.backend() == "torch":
            raise ValueError(
                "Invalid value received for argument `jit_compile`. MixingModel trains "
                "eagerly on the PyTorch backend (its seeded draws use torch generators, "
                "which torch.compile does not trace); pass jit_compile=False or 'auto'. "
                f"Received: jit_compile={jit_compile!r}"
            )
        metrics = list(metrics or [])
        if not any(m in ("accuracy", "acc") for m in metrics if isinstance(m, str)):
            metrics.insert(0, "accuracy")
        if draws.on_tensorflow():
            super().compile(optimizer=optimizer, jit_compile=False, metrics=metrics, **kwargs)
            if jit_compile == "auto":
                jit_compile = self._resolve_auto_jit_compile()
            self._mixing_jit = bool(jit_compile)
            self._xla_step = None
        else:
            super().compile(optimizer=optimizer, jit_compile=jit_compile, metrics=metrics,
                            **kwargs)
        if self.built:
            # Created now, the optimizer's variables do not make the first
            # step trace twice.
            self.optimizer.build(self.trainable_variables)

    def get_compile_config(self):
        return super().get_compile_config()

    def compile_from_config(self, config):
        # Keras' version skips models that override `compile` (with a
        # warning), so a loaded `.keras` file would lose its optimizer and
        # optimizer state (and `iterations`, which seeds the plans).
        config = keras.saving.deserialize_keras_object(config)
        if not draws.on_tensorflow():
            # A file saved on TensorFlow records jit_compile=False (XLA is the
            # model's own there), one from JAX its XLA: off TensorFlow the
            # loading backend's default applies.
            config.pop("jit_compile", None)
        self.compile(**config)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def inference_model(self):
        """A plain `keras.Model` over the same layers (shares the weights)."""
        # `input`/`output` keep the model's own structure (a lone tensor, not
        # `[tensor]`), so calling the copy on a tensor raises no warning.
        return keras.Model(self.input, self.output, name=f"{self.name}_inference")

    def get_config(self):
        return {**super().get_config(), **self._settings()}

    def _settings(self):
        return {
            "method": self.method.name,
            "method_options": {
                k: list(v) if isinstance(v, tuple) else v
                for k, v in self.method.options.items()
            },
            "seed": self.seed,
        }

    def _run_through_graph(self, *args, **kwargs):
        # `keras.models.clone_model` walks the graph with this method, then
        # builds the copy as `type(model)(inputs, outputs)`: the symbolic
        # outputs carry the settings to `__init__`.
        outputs = super()._run_through_graph(*args, **kwargs)
        for tensor in keras.tree.flatten(outputs):
            if isinstance(tensor, keras.KerasTensor):
                tensor._mixing_settings = self._settings()
        return outputs


def _copied_settings(outputs):
    """`(method, method_options, seed)` carried by `outputs` (see
    `MixingModel._run_through_graph`), else vanilla's with no seed."""
    settings = getattr(outputs[0], "_mixing_settings", None) if len(outputs) == 1 else None
    if settings is None:
        return "vanilla", None, None
    return settings["method"], settings["method_options"], settings["seed"]


def _iterations_in(optimizer, state=None):
    """The optimizer's `iterations` as the step sees it: JAX passes the
    optimizer's variables in `state` (the variable itself would read as a
    constant inside the compiled step); elsewhere the variable."""
    if state is not None:
        _, _, optimizer_variables, _ = state
        for variable, value in zip(optimizer.variables, optimizer_variables):
            if variable is optimizer.iterations:
                return value
    return optimizer.iterations


def _label_checks(k):
    """`(message, is_bad(labels))` of the class-label checks, in order."""
    return (
        ("Invalid labels: integer class labels are expected, received non-integral float "
         "labels (pass one-hot or soft targets of shape (N, K) for soft labels)",
         lambda v: v != np.round(v)),
        (f"Invalid labels: expected class labels in [0, {k}), received a negative label",
         lambda v: v < 0),
        (f"Invalid labels: expected class labels in [0, {k}) for a model with {k} outputs, "
         "received a larger label", lambda v: v >= k),
    )


def _raise_on_bad_labels(values, k):
    values = np.asarray(values)
    for message, is_bad in _label_checks(k):
        if np.any(is_bad(values)):
            raise ValueError(message)


def _checked_labels(y, k):
    """int32 labels from `y` (N,), checked to be integral and in [0, k)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        tf = _tf()
        (integral, _), (negative, _), (large, _) = _label_checks(k)
        checks = []
        if not y.dtype.is_integer:
            checks.append(tf.debugging.assert_equal(y, tf.round(y), message=integral))
        labels = tf.cast(y, tf.int64)
        checks.append(tf.debugging.assert_non_negative(labels, message=negative))
        checks.append(tf.debugging.assert_less(labels, tf.constant(k, tf.int64), message=large))
        with tf.control_dependencies(checks):
            return tf.identity(labels)
    if backend == "jax":
        import jax

        jax.debug.callback(_raise_on_bad_labels, y, k)
    else:
        _raise_on_bad_labels(ops.convert_to_numpy(y), k)
    return ops.cast(y, "int32")


class _Switch:
    """The mixing switch (True: mixing on), out of Keras' and
    `tf.train.Checkpoint`'s tracking: it is not a weight and is never saved
    (`StopMixing` sets it from the epoch). On TensorFlow a bool `tf.Variable`
    the step reads; elsewhere a Python bool."""

    def __init__(self):
        self.enabled = True
        self.variable = None
        if draws.on_tensorflow():
            tf = _tf()
            self.variable = tf.Variable(
                True, trainable=False, dtype=tf.bool, name="mixing_on",
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            )

    def set(self, enabled):
        """Sets the switch; True if it changed."""
        changed = enabled != self.enabled
        self.enabled = enabled
        if self.variable is not None:
            self.variable.assign(enabled)
        return changed

    def read(self):
        return self.variable.read_value() if self.variable is not None else self.enabled


class StopMixing(keras.callbacks.Callback):
    """Mixing off from the 0-based epoch `at_epoch` on.

    At every epoch start the model's mixing switch is set to `epoch <
    at_epoch`, so a run resumed at an epoch `>= at_epoch` trains plainly as
    well: every step then uses the batch's own targets (label smoothing
    still applies) and the method's loss on them, `L(y)`. At the end of
    `fit` the switch is turned back on. `at_epoch=0` never mixes.

    Args:
        at_epoch: int >= 0, the first epoch without mixing.
    """

    def __init__(self, at_epoch):
        super().__init__()
        self.at_epoch = check_epoch("at_epoch", at_epoch)

    def _set(self, enabled):
        if not hasattr(self.model, "set_mixing"):
            raise ValueError(
                "StopMixing needs a MixingModel (patchup_tf.training.MixingModel). "
                f"Received a model of type {type(self.model).__name__}.")
        self.model.set_mixing(enabled)

    def on_epoch_begin(self, epoch, logs=None):
        self._set(epoch < self.at_epoch)

    def on_train_end(self, logs=None):
        self._set(True)


def _all_finite(tensors):
    """True if every value of every tensor is finite.

    One pass per tensor: the total of the tensors' sums is NaN or +-inf as
    soon as one value is (NaN and inf propagate; inf - inf is NaN). Finite
    values whose total passes float32's 3.4e38 also count as non-finite:
    such weights are a diverged run anyway.
    """
    tf = _tf()
    sums = [tf.reduce_sum(tf.cast(t, tf.float32)) for t in tensors if t is not None]
    return tf.math.is_finite(tf.add_n(sums))


class StopOnNonFinite(keras.callbacks.TerminateOnNaN):
    """Stops `fit` when a step reports a non-finite loss, with a clear message.

    `MixingModel`'s step reports NaN when its inputs, loss, gradients or
    updated weights hold a NaN or an infinity.
    """

    def __init__(self):
        super().__init__()
        self._epoch = 0
        self.stopped_at = None  # (epoch, batch) of the stop: 1-based epoch, as Keras prints

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            print(f"\nBatch {batch}: a non-finite value (inputs, loss, gradients or "
                  "weights) appeared; training stopped. Check the inputs or lower the "
                  "learning rate.", file=sys.stderr)
            self.stopped_at = (self._epoch + 1, batch)
            self.model.stop_training = True


def step_lr(learning_rate, schedule=(), step_factors=()):
    """The reference's step schedule: `epoch -> lr`.

    `lr = learning_rate * prod(step_factors[i] for milestones schedule[i] <=
    epoch)` (0-based epochs, ascending milestones), set at each epoch start.
    """
    schedule, step_factors = list(schedule), list(step_factors)
    if len(schedule) != len(step_factors):
        raise ValueError(
            "`schedule` and `step_factors` must have the same length. "
            f"Received: schedule={schedule}, step_factors={step_factors}"
        )
    if schedule != sorted(schedule):
        raise ValueError(f"`schedule` must be ascending. Received: schedule={schedule}")

    def lr_at(epoch, _current_lr=None):
        lr = learning_rate
        for factor in step_factors[: bisect.bisect_right(schedule, epoch)]:
            lr *= factor
        return lr

    return lr_at


def recipe(learning_rate=0.1, momentum=0.9, decay=1e-4, schedule=(500, 1000, 1500),
           step_factors=(0.1, 0.1, 0.1)):
    """The paper's optimiser and schedule: `(TorchSGD, LearningRateScheduler)`.

    SGD lr 0.1, momentum 0.9, Nesterov, coupled L2 `decay` on every parameter;
    the defaults are the PreActResNet schedule (WRN: `(200, 300), (0.1, 0.1)`).
    """
    lr_at = step_lr(learning_rate, schedule, step_factors)
    optimizer = TorchSGD(learning_rate=learning_rate, momentum=momentum, nesterov=True, l2=decay)
    return optimizer, keras.callbacks.LearningRateScheduler(lr_at)
