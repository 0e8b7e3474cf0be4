"""Classification metrics over a whole dataset: top-1, top-5, error and loss.

The loss is the mean softmax cross-entropy of the logits with the hard
labels (`docs/methods.md`, "The loss": evaluation uses softmax cross-entropy, not the
training BCE). Every quantity is summed over all samples and divided by the
sample count once, so a short last batch weighs exactly its size.
"""

import weakref

import tensorflow as tf

__all__ = ["evaluate_classifier", "hard_labels", "cross_entropy_per_sample"]

# One compiled step per model, so repeated evaluations (every epoch) do not
# retrace. Weak keys: the cache never keeps a model alive.
_STEP_CACHE = weakref.WeakKeyDictionary()


def cached_per_model(cache, model, build):
    """`cache[model]`, made by `build(model)` on first use (not cached for
    models that cannot be weakly referenced)."""
    try:
        return cache[model]
    except (KeyError, TypeError):
        pass
    value = build(model)
    try:
        cache[model] = value
    except TypeError:
        pass
    return value


def hard_labels(targets):
    """Integer labels `(N,)` from one-hot / soft `(N, K)` or integer `(N,)`."""
    targets = tf.convert_to_tensor(targets)
    if targets.shape.rank == 2:
        return tf.argmax(targets, axis=-1, output_type=tf.int64)
    if targets.shape.rank == 1:
        return tf.cast(targets, tf.int64)
    raise ValueError(
        "Invalid value received for argument `targets`. Expected one-hot "
        "targets of shape (N, K) or integer labels of shape (N,). Received: "
        f"targets.shape={targets.shape}"
    )


def cross_entropy_per_sample(logits, targets):
    """Softmax cross-entropy per sample; targets one-hot `(N,K)` or int `(N,)`."""
    logits = tf.cast(logits, tf.float32)
    targets = tf.convert_to_tensor(targets)
    if targets.shape.rank == 2:
        return tf.nn.softmax_cross_entropy_with_logits(
            labels=tf.cast(targets, tf.float32), logits=logits
        )
    return tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=hard_labels(targets), logits=logits
    )


def _batch_sums(logits, targets):
    """(loss sum, top-1 hits, top-5 hits, count) of one batch, as float64."""
    logits = tf.cast(logits, tf.float32)
    labels = hard_labels(targets)
    loss = cross_entropy_per_sample(logits, targets)
    k = tf.minimum(5, tf.shape(logits)[-1])
    top = tf.cast(tf.math.top_k(logits, k=k).indices, tf.int64)
    hits = tf.equal(top, labels[:, None])
    top1 = tf.reduce_sum(tf.cast(hits[:, 0], tf.float64))
    top5 = tf.reduce_sum(tf.cast(tf.reduce_any(hits, axis=-1), tf.float64))
    count = tf.cast(tf.shape(labels)[0], tf.float64)
    return tf.reduce_sum(tf.cast(loss, tf.float64)), top1, top5, count


def _compiled_step(model):
    def build(model):
        @tf.function(reduce_retracing=True)
        def step(images, targets):
            logits = model(images, training=False)
            return _batch_sums(logits, targets)

        return step

    return cached_per_model(_STEP_CACHE, model, build)


def sum_over_batches(batch_sums, dataset):
    """Adds `batch_sums(images, targets)` up over `dataset`, as Python floats.

    `batch_sums` returns a tuple of per-batch sums whose last entry is the
    batch's sample count; an empty dataset is an error.
    """
    totals = None
    for images, targets in dataset:
        values = [float(v) for v in batch_sums(images, targets)]
        totals = values if totals is None else [t + v for t, v in zip(totals, values)]
    if not totals or totals[-1] == 0:
        raise ValueError(
            "Invalid value received for argument `dataset`. Expected at "
            "least one sample. Received: an empty dataset"
        )
    return totals


def evaluate_classifier(model, dataset):
    """Top-1 / top-5 accuracy (%), error (%) and mean CE of `model` on `dataset`.

    Args:
        model: a callable (normally a Keras model) mapping images to logits;
            it is called with `training=False`.
        dataset: an iterable (normally a `tf.data.Dataset`) of
            `(images, targets)` batches; `targets` are one-hot `(N, K)` or
            integer labels `(N,)`.

    Returns:
        dict with `top1`, `top5`, `error` (100 - top1) and `loss`, all
        Python floats, aggregated exactly over every sample.
    """
    loss_sum, top1, top5, count = sum_over_batches(_compiled_step(model), dataset)
    acc1 = 100.0 * top1 / count
    return {
        "top1": acc1,
        "top5": 100.0 * top5 / count,
        "error": 100.0 * (count - top1) / count,
        "loss": loss_sum / count,
    }
