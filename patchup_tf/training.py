"""The training engine: a functional Keras model whose `train_step` mixes.

`MixingModel` is an ordinary functional model (build it from `inputs,
outputs`, as `keras.Model`) with a custom `train_step`: it draws the batch's
plan once, mixes the input images (position 0) and lets the model's
`MixingPoint` layers mix hidden features, then forms the method's loss from the
targets the mixing produced. `predict`, `evaluate`, `save` and `export` see
the plain network. The recipe (PyTorch's SGD, the step schedule) is here too.
"""

import bisect
import math
import random
import sys

import keras
import tensorflow as tf

from patchup_tf.heads import check_logits
from patchup_tf.losses import softmax_ce
from patchup_tf.layers.mixing_point import MixingContext, MixingPoint, mixing_context
from patchup_tf.methods import Method
from patchup_tf.optimizer import TorchSGD
from patchup_tf.rules import check_epoch, check_seed


def _mixing_positions(model):
    return sorted(
        layer.position for layer in model._flatten_layers() if isinstance(layer, MixingPoint)
    )


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
            replica)`, so a seed reproduces a run, across restarts too.

    Methods acting on hidden features need `MixingPoint` layers at positions
    `1..k` of the model. `set_mixing(False)` (or the `StopMixing` callback)
    makes every training step a plain one.
    """

    def __init__(self, *args, method=None, method_options=None, seed=None, **kwargs):
        super().__init__(*args, **kwargs)
        if method is None and method_options is None and seed is None:
            method, method_options, seed = _copied_settings(self.outputs)
        self.method = Method(method, **dict(method_options or {}))
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
        return bool(self._mixing_switch.variable.numpy())

    def set_mixing(self, enabled):
        """Switches mixing on or off for the following training steps.

        Off, every step is a plain step: no position mixes, the targets are
        the batch's own and the method's loss reads them (`L(y)`). A
        non-trainable variable read by the step: flipping it retraces
        nothing. It is not saved; `StopMixing` sets it at every epoch start.
        """
        if not isinstance(enabled, bool):
            raise ValueError("Invalid value received for argument `enabled`. Expected True or "
                             f"False. Received: enabled={enabled!r}")
        self._mixing_switch.variable.assign(enabled)

    def _switched(self, plan):
        """`plan` with `apply` and `active` forced False while mixing is off."""
        on = self._mixing_switch.variable.read_value()
        return {**plan, "apply": plan["apply"] & on, "active": plan["active"] & on}

    @property
    def num_classes(self):
        return self.outputs[0].shape[-1]

    def _targets(self, y):
        """One-hot float32 targets from integer labels `(N,)` / `(N, 1)` (also
        integral floats) or from target distributions `(N, K)`.

        Labels outside `[0, K)` and non-integral float labels raise, also
        inside `tf.function` (as `InvalidArgumentError`).
        """
        k = self.num_classes
        y = tf.convert_to_tensor(y)
        if y.shape.rank == 1 or (y.shape.rank == 2 and y.shape[-1] == 1 and k != 1):
            y = tf.reshape(y, [-1])
            checks = []
            if not y.dtype.is_integer:
                checks.append(tf.debugging.assert_equal(
                    y, tf.round(y), message="Invalid labels: integer class labels are "
                    "expected, received non-integral float labels (pass one-hot or soft "
                    "targets of shape (N, K) for soft labels)"))
            labels = tf.cast(y, tf.int64)
            checks.append(tf.debugging.assert_non_negative(
                labels, message=f"Invalid labels: expected class labels in [0, {k}), "
                "received a negative label"))
            checks.append(tf.debugging.assert_less(
                labels, tf.constant(k, tf.int64), message=f"Invalid labels: expected class "
                f"labels in [0, {k}) for a model with {k} outputs, received a larger label"))
            with tf.control_dependencies(checks):
                return tf.one_hot(labels, k, dtype=tf.float32)
        if y.shape.rank != 2 or y.shape[-1] != k:
            raise ValueError(
                f"Invalid targets: expected integer labels (N,) or one-hot targets "
                f"(N, {k}) for a model with {k} classes. "
                f"Received targets of shape {tuple(y.shape)}."
            )
        return tf.cast(y, tf.float32)

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
        x = tf.convert_to_tensor(x)
        return x if x.dtype.is_floating else tf.cast(x, tf.float32)

    def step_seed(self):
        """int32[2] seed of this step and replica: `f(seed, iterations, replica)`."""
        seed = tf.constant([self.seed, 0], tf.int32)
        seed = tf.random.experimental.stateless_fold_in(seed, self.optimizer.iterations)
        replica = tf.distribute.get_replica_context()
        replica_id = replica.replica_id_in_sync_group if replica is not None else 0
        return tf.random.experimental.stateless_fold_in(seed, replica_id)

    def draw_plan(self, x, seed=None):
        """The batch's plan (see `Method.draw_plan`), from `step_seed()` by default."""
        return self.method.draw_plan(
            self.step_seed() if seed is None else seed, tf.shape(x)[0]
        )

    def mixed_forward(self, x, targets, plan):
        """Runs the training forward pass under `plan`.

        Returns `(logits, MixResult)`: its `features` are the input images
        the network received (mixed at position 0 where the plan says), its
        targets and `u` what the loss reads after every position.
        """
        context = MixingContext(self.method, plan, targets)
        with mixing_context(context):
            x = context.mix(0, x)
            logits = self(x, training=True)
        return logits, context.result._replace(features=x)

    # ------------------------------------------------------------- steps
    def train_step(self, data):
        """One mixed step: the plan, the mixing, the method's loss, the update.

        Sample weights (from `sample_weight` or `class_weight`) travel with
        the targets: a mixed sample's weight is mixed like its targets.
        The loss is `sum(w_i l_i) / N` (Keras' `sum_over_batch_size`).
        Label smoothing (`label_smoothing`) acts on the one-hot targets
        before any mixing; the metrics see the labels as passed.
        """
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x = self._images(x)
        targets = self.method.smooth_targets(self._targets(y))
        weighted = sample_weight is not None
        if weighted:
            weights = tf.reshape(tf.cast(sample_weight, tf.float32), [-1, 1])
            targets = tf.concat([targets, weights], axis=-1)
        # The plan is drawn outside XLA: TF's Gamma sampler has no XLA kernel.
        plan = self._switched(self.draw_plan(x))
        loss, logits = self._compute_step(x, targets, plan, weighted)
        # Batches are equal (fit drops no data, but the trainer's do): the
        # plain mean of the batch losses.
        self._loss_tracker.update_state(loss)
        return self.compute_metrics(x, y, logits, sample_weight)

    def _apply_gradients(self, x, targets, plan, weighted=False):
        """Forward, loss, backward and update for one planned batch.

        Returns `(loss, logits)`; the loss is NaN if anything in the step
        (inputs, loss, gradients, updated weights) was not finite.
        """
        with tf.GradientTape() as tape:
            logits, result = self.mixed_forward(x, targets, plan)
            loss = self.method.loss(logits, targets, result, plan, weighted=weighted)
            # Gradients are summed over replicas: scale to the global mean.
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            scaled = self.optimizer.scale_loss(loss / replicas)
        grads = tape.gradient(scaled, self.trainable_variables)
        self.optimizer.apply(grads, self.trainable_variables)
        # The updated weights carry any non-finite gradient (w - lr * NaN).
        finite = _all_finite([x, loss, *self.trainable_variables])
        return tf.where(finite, loss, float("nan")), logits

    @property
    def _compute_step(self):
        if getattr(self, "_xla_step", None) is None:
            self._xla_step = (
                tf.function(self._apply_gradients, jit_compile=True)
                if getattr(self, "_mixing_jit", False) else self._apply_gradients
            )
        return self._xla_step

    def test_step(self, data):
        """Softmax cross-entropy on the clean labels (`loss`) and the compiled
        metrics, in inference mode."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x = self._images(x)
        targets = self._targets(y)
        logits = self(x, training=False)
        weights = None if sample_weight is None else tf.cast(sample_weight, tf.float32)
        self._loss_tracker.update_state(
            softmax_ce(logits, targets, sample_weight=weights), sample_weight=tf.shape(x)[0]
        )
        return self.compute_metrics(x, y, logits, sample_weight)

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
        `jit_compile=True` compiles each step's forward, backward and update
        with XLA; the plan is drawn outside XLA, which has no kernel for its
        Beta draws (StatelessRandomGamma). `"auto"` is XLA on GPUs only.
        """
        if kwargs.get("loss") is not None:
            raise ValueError(
                "MixingModel forms its own loss (the method's, `loss='bce'` or "
                "'ce' in method_options); compile it without `loss`. "
                f"Received: loss={kwargs['loss']!r}"
            )
        metrics = list(metrics or [])
        if not any(m in ("accuracy", "acc") for m in metrics if isinstance(m, str)):
            metrics.insert(0, "accuracy")
        super().compile(optimizer=optimizer, jit_compile=False, metrics=metrics, **kwargs)
        if jit_compile == "auto":
            jit_compile = self._resolve_auto_jit_compile()
        self._mixing_jit = bool(jit_compile)
        self._xla_step = None
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


class _Switch:
    """Holds the mixing switch (a bool `tf.Variable`, True: mixing on) out of
    Keras' and `tf.train.Checkpoint`'s tracking: it is not a weight and is
    never saved (`StopMixing` sets it from the epoch)."""

    def __init__(self):
        self.variable = tf.Variable(
            True, trainable=False, dtype=tf.bool, name="mixing_on",
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )


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
