"""The training losses: the paper's BCE on softmax, and softmax cross-entropy.

Both take logits `(N, K)` and target distributions `(N, K)` and return the
float32 mean over the batch (`docs/methods.md`, "The loss"); with
`sample_weight` `(N,)`, `sum(w_i l_i) / N` (Keras' `sum_over_batch_size`).
"""

import tensorflow as tf


def _reduce(per_element, sample_weight):
    """Mean over every element, or `sum(w_i * mean_i) / N` with weights."""
    if sample_weight is None:
        return tf.reduce_mean(per_element)
    if per_element.shape.rank == 2:
        per_element = tf.reduce_mean(per_element, axis=-1)
    weights = tf.reshape(tf.cast(sample_weight, tf.float32), [-1])
    return tf.reduce_sum(weights * per_element) / tf.cast(tf.size(per_element), tf.float32)


def bce_on_softmax(logits, targets, sample_weight=None):
    """The reference's loss: `mean over N*K of -(t log p + (1-t) log(1-p))`,
    `p = softmax(logits)`, each log clamped at -100 as `torch.nn.BCELoss`.

    Computed in float32; the gradient stays finite when `p` saturates.
    """
    logits = tf.cast(logits, tf.float32)
    targets = tf.cast(targets, tf.float32)
    p = tf.nn.softmax(logits, axis=-1)
    # log p from log_softmax: TF flushes float32 denormals to zero, so
    # log(softmax) would clamp at -100 where torch's log(p) still reads
    # -87 .. -103; 1 - p stays the float32 difference, as in the reference.
    log_p = tf.maximum(tf.nn.log_softmax(logits, axis=-1), -100.0)
    log_1mp = _clamped_log(1.0 - p)
    return -_reduce(targets * log_p + (1.0 - targets) * log_1mp, sample_weight)


def _clamped_log(v):
    positive = v > 0
    safe = tf.where(positive, v, tf.ones_like(v))
    return tf.where(positive, tf.maximum(tf.math.log(safe), -100.0), -100.0)


def softmax_ce(logits, targets, sample_weight=None):
    """Softmax cross-entropy with (possibly mixed) target distributions, mean over N."""
    logits = tf.cast(logits, tf.float32)
    targets = tf.cast(targets, tf.float32)
    return _reduce(
        tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=logits), sample_weight
    )


LOSSES = {"bce": bce_on_softmax, "ce": softmax_ce}
"""The losses by their `loss` option name."""

