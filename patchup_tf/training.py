"""The training engine: a functional Keras model whose training steps mix.

`MixingModel` is an ordinary functional model (build it from `inputs,
outputs`, as `keras.Model`). Each training step draws the batch's plan once,
mixes the input images (position 0), lets the model's `MixingPoint` layers
mix hidden features, and `compute_loss` forms the method's loss from the
targets the mixing produced. What differs per backend (the step itself,
its compilation, the switch, the label check) is in `patchup_tf.backend`:
on JAX and PyTorch the step is Keras' own run inside the batch's mixing
context; on TensorFlow the library's, so that the plan's Beta draws (which
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
from keras import ops

from patchup_tf import backend, draws
from patchup_tf.heads import check_logits
from patchup_tf.layers.mixing_point import (
    MixingContext,
    MixingPoint,
    ReplicaShare,
    current_context,
    mixing_context,
)
from patchup_tf.losses import softmax_ce
from patchup_tf.methods import Method
from patchup_tf.optimizer import TorchSGD
from patchup_tf.rules import DEFAULT_METHOD, check_epoch, check_seed, schedule_problem


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
            per_sample, pairing, ...`); unset ones take the paper's settings.
            `pairing` (`"replica"`, the default, or `"global"`) says where
            partners come from when several replicas train one batch.
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
        self.method = Method(method or DEFAULT_METHOD, **dict(method_options or {}))
        self._mixing_switch = backend.current().Switch()
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
        if self._mixing_switch.set(enabled):
            backend.current().switch_changed(self)

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
            labels = backend.current().checked_labels(ops.reshape(y, (-1,)), k)
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

    @property
    def pairing(self):
        """`"replica"` or `"global"` (the `pairing` method option)."""
        return self.method.options["pairing"]

    def _share(self):
        """The `ReplicaShare` a step of this replica mixes through, or None.

        `"global"` pairing with several replicas (TensorFlow's strategies):
        the mixing points gather every replica's share and mix the global
        batch by one plan. Otherwise each step mixes the batch it sees.
        """
        if self.pairing != "global" or backend.current().replicas_in_sync() == 1:
            return None
        return ReplicaShare(backend.current())

    def step_seed(self, step=None):
        """int32[2] seed of this step and replica: `f(seed, iterations, replica)`
        (`step`: the iterations, default the optimizer's; the replica: its
        id with `"replica"` pairing, 0 with `"global"`)."""
        step = self.optimizer.iterations if step is None else step
        replica = backend.current().replica_id() if self.pairing == "replica" else 0
        return draws.step_seed(self.seed, step, replica)

    def draw_plan(self, x, seed=None):
        """The batch's plan (see `Method.draw_plan`), from `step_seed()` by
        default: for the global batch when the step mixes it whole (`"global"`
        pairing across replicas), and with partners within each device's
        shard when the step sees several (`"replica"` pairing under
        `keras.distribution`)."""
        seed = self.step_seed() if seed is None else seed
        size = ops.shape(x)[0]
        if self._share() is not None:
            return self.method.draw_plan(seed, size * backend.current().replicas_in_sync())
        groups = backend.current().shards_in_batch() if self.pairing == "replica" else 1
        return self.method.draw_plan(seed, size, groups=groups)

    @contextlib.contextmanager
    def mixing(self, x, targets, plan, weighted=False):
        """Opens the step's `MixingContext`; yields the images mixed at
        position 0 (where the plan says), for the network to be called on."""
        context = MixingContext(self.method, plan, targets, weighted=weighted,
                                share=self._share())
        x = context.mix(0, x)
        with mixing_context(context):
            yield x

    def mixed_forward(self, x, targets, plan):
        """Runs the training forward pass under `plan`.

        Returns `(logits, MixResult)`: its `features` are the input images
        the network received (mixed at position 0 where the plan says), its
        targets and `u` what the loss reads after every position.
        """
        with self.mixing(x, targets, plan) as x:
            logits = self(x, training=True)
            result = current_context().local_result
        return logits, result._replace(features=x)

    def step_inputs(self, data, step=None):
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
            return self.method.loss(y_pred, context.targets, context.local_result,
                                    context.plan, weighted=context.weighted)
        weights = None if sample_weight is None else ops.cast(sample_weight, "float32")
        # Keras' TensorFlow step multiplies by the replicas it divides by here.
        return (softmax_ce(y_pred, self._targets(y), sample_weight=weights)
                / backend.current().replicas_in_sync())

    def train_step(self, *args):
        """One mixed step: the plan, the mixing, the method's loss, the update
        (the backend's step, `patchup_tf.backend`). The metrics see the
        labels as passed and the logits."""
        return backend.current().train_step(self, super().train_step, *args)

    def keras_step_mixed(self, keras_step, step, data, state=()):
        """Keras' own `keras_step(*state, data)` run on the batch's mixed
        images inside its mixing context (`step`: the plan's step)."""
        images, targets, plan, weighted, (_, y, sample_weight) = self.step_inputs(data, step)
        with self.mixing(images, targets, plan, weighted) as mixed:
            data = keras.utils.pack_x_y_sample_weight(mixed, y, sample_weight)
            return keras_step(*state, data)

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
        mode = backend.current().compile_mode(jit_compile)
        metrics = list(metrics or [])
        if not any(m in ("accuracy", "acc") for m in metrics if isinstance(m, str)):
            metrics.insert(0, "accuracy")
        super().compile(optimizer=optimizer, jit_compile=mode, metrics=metrics, **kwargs)
        backend.current().after_compile(self, jit_compile)
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
        self.compile(**backend.current().loaded_compile_config(config))
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
        return DEFAULT_METHOD, None, None
    return settings["method"], settings["method_options"], settings["seed"]


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
    problem = schedule_problem(schedule, step_factors)
    if problem == "length":
        raise ValueError(
            "`schedule` and `step_factors` must have the same length. "
            f"Received: schedule={schedule}, step_factors={step_factors}"
        )
    if problem == "order":
        raise ValueError(f"`schedule` must be ascending. Received: schedule={schedule}")

    def lr_at(epoch, _current_lr=None):
        lr = learning_rate
        for factor in step_factors[: bisect.bisect_right(schedule, epoch)]:
            lr *= factor
        return lr

    return lr_at


def paper_optimizer(learning_rate=0.1, momentum=0.9, decay=1e-4):
    """The paper's optimiser: SGD lr 0.1, momentum 0.9, Nesterov, coupled L2
    `decay` on every parameter (a `TorchSGD`)."""
    return TorchSGD(learning_rate=learning_rate, momentum=momentum, nesterov=True, l2=decay)


def recipe(learning_rate=0.1, momentum=0.9, decay=1e-4, schedule=(500, 1000, 1500),
           step_factors=(0.1, 0.1, 0.1)):
    """The paper's optimiser and schedule: `(TorchSGD, LearningRateScheduler)`.

    `paper_optimizer(learning_rate, momentum, decay)` and the `step_lr`
    schedule; the defaults are the PreActResNet schedule (WRN: `(200, 300),
    (0.1, 0.1)`).
    """
    lr_at = step_lr(learning_rate, schedule, step_factors)
    optimizer = paper_optimizer(learning_rate, momentum, decay)
    return optimizer, keras.callbacks.LearningRateScheduler(lr_at)
