"""TensorFlow: TF's stateless Philox draws, graph-mode label checks, the
mixing switch as a variable, and the library's own training step.

Draws are TF's stateless kernels (`tf.random.stateless_*`,
`stateless_fold_in`, `stateless_split`); uniforms are formed from the top
24 of their uint32 bits (TF's float kernel converts bits differently under
XLA than eagerly; the bits agree). The step draws the plan outside XLA (TF's
Gamma sampler has no XLA kernel) and, with `jit_compile=True`, compiles the
forward pass, backward pass and update with XLA; under a `tf.distribute`
strategy every replica runs it on its share of the batch.
"""

import itertools

import tensorflow as tf

from patchup_tf.backend.keras_ops import non_negative
from patchup_tf.rules import label_checks

_HAS_GPU = []
ITERATOR_TRAIN_FUNCTION = True
"""Keras' `train_function(iterator)` runs steps (TensorFlow's signature)."""


# -------------------------------------------------------------------- draws
def int32_seed(seed):
    """A shape-[2] integer tensor as int32, entries made non-negative (TF's
    stateless kernels sign-extend an int32 seed while their XLA kernels
    zero-extend it)."""
    return non_negative(tf.cast(seed, tf.int32))


def fold_in(seed, index):
    """`stateless_fold_in`, made non-negative."""
    return non_negative(tf.random.experimental.stateless_fold_in(seed, index))


def split(seed, num):
    """`stateless_split`, made non-negative."""
    return tf.unstack(non_negative(tf.random.experimental.stateless_split(seed, num=num)))


def step_seed(seed, step, replica):
    """`stateless_fold_in(stateless_fold_in([seed, 0], step), replica)`; the
    step an int64 tensor (the optimizer's `iterations`)."""
    folded = tf.random.experimental.stateless_fold_in(tf.constant([seed, 0], tf.int32), step)
    return tf.random.experimental.stateless_fold_in(folded, replica)


def uniform(shape, seed):
    bits = tf.random.stateless_uniform(shape, seed, minval=None, maxval=None, dtype=tf.uint32)
    return tf.cast(tf.bitwise.right_shift(bits, 8), tf.float32) * (2.0**-24)


def randint(shape, seed, low, high):
    return tf.random.stateless_uniform(shape, seed, low, high, dtype=tf.int32)


def gamma(shape, seed, alpha):
    return tf.random.stateless_gamma(shape, seed, alpha=float(alpha), dtype=tf.float32)


def argsort(keys):
    return tf.argsort(keys, axis=-1, stable=True)


def wide_float():
    return "float64"


# ------------------------------------------------------------------- checks
def checked_labels(y, k):
    """int64 labels from `y` (N,), checked in the graph (`InvalidArgumentError`)."""
    (integral, _), (negative, _), (large, _) = label_checks(k)
    checks = []
    if not y.dtype.is_integer:
        checks.append(tf.debugging.assert_equal(y, tf.round(y), message=integral))
    labels = tf.cast(y, tf.int64)
    checks.append(tf.debugging.assert_non_negative(labels, message=negative))
    checks.append(tf.debugging.assert_less(labels, tf.constant(k, tf.int64), message=large))
    with tf.control_dependencies(checks):
        return tf.identity(labels)


def all_finite(tensors):
    """True if every value of every tensor is finite.

    One pass per tensor: the total of the tensors' sums is NaN or +-inf as
    soon as one value is (NaN and inf propagate; inf - inf is NaN). Finite
    values whose total passes float32's 3.4e38 also count as non-finite:
    such weights are a diverged run anyway.
    """
    sums = [tf.reduce_sum(tf.cast(t, tf.float32)) for t in tensors if t is not None]
    return tf.math.is_finite(tf.add_n(sums))


# ------------------------------------------------------------------ devices
def replica_id():
    """This replica's index in its `tf.distribute` strategy (0 outside one)."""
    replica = tf.distribute.get_replica_context()
    return replica.replica_id_in_sync_group if replica is not None else 0


def replicas_in_sync():
    """How many replicas run the step, each on its share of the batch."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def shards_in_batch():
    """Each replica's step sees its own share only: one group of images."""
    return 1


def all_gather(x):
    """`x` of every replica, concatenated on the batch axis in replica order
    (differentiable: each replica's gradient flows back to its share)."""
    replica = tf.distribute.get_replica_context()
    if replica is None or replica.num_replicas_in_sync == 1:
        return x
    # Placed on the replica's device: the gather sends to where its input
    # lives, and a traced tensor of a single-device worker may name none.
    with tf.device(_replica_device(replica)):
        x = tf.identity(x)
    gathered = _dense_gradient(replica.all_gather(x, axis=0))
    size = x.shape[0]
    # The gather keeps no static shape; the mixing ops size blocks from it.
    gathered.set_shape([None if size is None else size * replica.num_replicas_in_sync,
                        *x.shape[1:]])
    return gathered


def _replica_device(replica):
    """The device this replica computes on (a `MultiWorkerMirroredStrategy`
    replica context of several workers fails to name it: then its worker's
    first, one device a worker)."""
    try:
        devices = tf.nest.flatten(replica.devices)
    except IndexError:
        devices = []
    return devices[0] if devices else tf.distribute.get_strategy().extended.worker_devices[0]


@tf.custom_gradient
def _dense_gradient(x):
    """The identity, its gradient made dense: the all-gather's own gradient
    takes no `IndexedSlices` (what a gather of rows sends back)."""
    return tf.identity(x), lambda dy: tf.convert_to_tensor(dy)


# --------------------------------------------------------------------- step
class Switch:
    """The mixing switch (True: mixing on) as a bool `tf.Variable` the step
    reads (flipping it retraces nothing), out of Keras' and
    `tf.train.Checkpoint`'s tracking: it is not a weight and is never saved."""

    def __init__(self):
        self.enabled = True
        self.variable = tf.Variable(
            True, trainable=False, dtype=tf.bool, name="mixing_on",
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )

    def set(self, enabled):
        """Sets the switch; True if it changed."""
        changed = enabled != self.enabled
        self.enabled = enabled
        self.variable.assign(enabled)
        return changed

    def read(self):
        return self.variable.read_value()


def switch_changed(model):
    """Nothing to do: the step reads the switch's variable."""


def train_step(model, keras_step, data):
    """One mixed step: the plan (outside XLA), then forward, loss, backward
    and update (in XLA with `jit_compile=True`); the logs."""
    images, targets, plan, weighted, (x, y, sample_weight) = model.step_inputs(data)
    loss, logits = _compiled_update(model)(images, targets, plan, weighted)
    # Batches are equal (fit drops no data, but the trainer's do): the
    # plain mean of the batch losses.
    model._loss_tracker.update_state(loss)
    return model.compute_metrics(images, y, logits, sample_weight)


def _update(model, x, targets, plan, weighted=False):
    """Forward, loss, backward and update for one planned batch.

    Returns `(loss, logits)`; the loss is NaN if anything in the step
    (inputs, loss, gradients, updated weights) was not finite.
    """
    with tf.GradientTape() as tape:
        with model.mixing(x, targets, plan, weighted) as mixed:
            logits = model(mixed, training=True)
            loss = model.compute_loss(mixed, None, logits, None, training=True)
        # Gradients are summed over replicas: scale to the global mean.
        scaled = model.optimizer.scale_loss(loss / replicas_in_sync())
    grads = tape.gradient(scaled, model.trainable_variables)
    model.optimizer.apply(grads, model.trainable_variables)
    # The updated weights carry any non-finite gradient (w - lr * NaN).
    finite = all_finite([x, loss, *model.trainable_variables])
    return tf.where(finite, loss, float("nan")), logits


def _compiled_update(model):
    """`_update` bound to `model`, XLA-compiled if `compile` asked for it
    (built once per compile, kept as `model._xla_step`)."""
    if getattr(model, "_xla_step", None) is None:
        def update(x, targets, plan, weighted=False):
            return _update(model, x, targets, plan, weighted)

        model._xla_step = (tf.function(update, jit_compile=True)
                           if getattr(model, "_mixing_jit", False) else update)
    return model._xla_step


def train_function_per_size(model, make_train_function, force=False):
    """Keras' train function, one per image size of the batches: Keras'
    TensorFlow step would trace a second size with the sizes left unknown
    (`AnySizeMixingModel`; JAX traces per shape, PyTorch runs eagerly)."""
    if force or not isinstance(model.train_function, _StepPerSize):
        model.train_function = _StepPerSize(model, make_train_function)
    return model.train_function


class _StepPerSize:
    def __init__(self, model, make_train_function):
        self.model, self.make = model, make_train_function
        self.functions = {}

    def __call__(self, iterator):
        size, iterator = _batch_size_hw(iterator)
        self.model.check_batch_size(size)
        if size not in self.functions:
            self.make(force=True)
            self.functions[size], self.model.train_function = self.model.train_function, self
        return self.functions[size](iterator)


def _batch_size_hw(iterator):
    """`((height, width), iterator)` of the batches `iterator` gives: from
    its `element_spec` (a tf.data iterator), else from a first batch, put
    back (`train_on_batch`'s generator)."""
    spec = getattr(iterator, "element_spec", None)
    if spec is None:
        first = next(iterator)
        iterator, spec = itertools.chain([first], iterator), first
    leaves = tf.nest.flatten(spec, expand_composites=True)
    shape = tuple(getattr(leaves[0], "shape", ())) if leaves else ()
    return (tuple(shape[1:3]) if len(shape) == 4 else (None, None)), iterator


def compile_mode(jit_compile):
    """What Keras' `compile` gets: no XLA around the whole step (the plan's
    Beta draws have no XLA kernel); `after_compile` keeps the user's choice
    for the update."""
    return False


def after_compile(model, jit_compile):
    if jit_compile == "auto":
        jit_compile = model._resolve_auto_jit_compile()
    model._mixing_jit = bool(jit_compile)
    model._xla_step = None


# --------------------------------------------------------------- batch norm
def fuses_batch_norm(dtype):
    """True if `FusedBatchNormV3` takes `dtype` here (float16: on GPUs only)."""
    if dtype == "float16":
        if not _HAS_GPU:
            _HAS_GPU.append(bool(tf.config.list_physical_devices("GPU")))
        return _HAS_GPU[0]
    return dtype in ("float32", "bfloat16")


def fused_batch_norm(x, scale, offset, moving, epsilon):
    """`FusedBatchNormV3` on NHWC `x`: `(y, (mean, unbiased variance))` from
    the batch when `moving` is None, else `(y, None)` normalised by `moving`
    (the moving mean and variance)."""
    training = moving is None
    empty = tf.zeros([0], tf.float32)
    mean, variance = (empty, empty) if training else (tf.cast(v, tf.float32) for v in moving)
    y, batch_mean, batch_variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
        x=x, scale=scale, offset=offset, mean=mean, variance=variance, epsilon=epsilon,
        exponential_avg_factor=1.0, data_format="NHWC", is_training=training,
    )
    return y, ((batch_mean, batch_variance) if training else None)


def loaded_compile_config(config):
    """A compile config read from a `.keras` file: as saved."""
    return config
