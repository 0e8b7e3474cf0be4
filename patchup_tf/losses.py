"""The training losses: the paper's BCE on softmax, and softmax cross-entropy.

Both take logits `(N, K)` and target distributions `(N, K)` and return the
float32 mean over the batch (`docs/methods.md`, "The loss"); with
`sample_weight` `(N,)`, `sum(w_i l_i) / N` (Keras' `sum_over_batch_size`).
Their per-sample forms (`PER_SAMPLE_LOSSES`) return the `(N,)` terms
`w_i l_i` whose mean is that loss, for losses weighted per image.
"""

from keras import ops

from patchup_tf.rules import check_label_smoothing


def _reduce(per_element, sample_weight):
    """Mean over every element, or `sum(w_i * mean_i) / N` with weights."""
    if sample_weight is None:
        return ops.mean(per_element)
    if len(per_element.shape) == 2:
        per_element = ops.mean(per_element, axis=-1)
    weights = ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
    return ops.sum(weights * per_element) / ops.cast(ops.size(per_element), "float32")


def _per_sample(per_element, sample_weight):
    """`(N,)`: each row's mean (`(N, K)` input) or value (`(N,)`), times its weight."""
    if len(per_element.shape) == 2:
        per_element = ops.mean(per_element, axis=-1)
    if sample_weight is None:
        return per_element
    return ops.reshape(ops.cast(sample_weight, "float32"), (-1,)) * per_element


def _bce_terms(logits, targets):
    """`t log_p + (1-t) log_1mp`, `(N, K)`, as `bce_on_softmax` describes."""
    logits = ops.cast(logits, "float32")
    targets = ops.cast(targets, "float32")
    p = ops.softmax(logits, axis=-1)
    # log p from log_softmax: TF flushes float32 denormals to zero, so
    # log(softmax) would clamp at -100 where torch's log(p) still reads
    # -87 .. -103; 1 - p stays the float32 difference, as in the reference.
    log_p = ops.maximum(ops.log_softmax(logits, axis=-1), -100.0)
    log_1mp = _clamped_log(1.0 - p)
    return targets * log_p + (1.0 - targets) * log_1mp


def bce_on_softmax(logits, targets, sample_weight=None):
    """The reference's loss: `mean over N*K of -(t log p + (1-t) log(1-p))`,
    `p = softmax(logits)`, each log clamped at -100 as `torch.nn.BCELoss`.

    Computed in float32; the gradient stays finite when `p` saturates.
    """
    return -_reduce(_bce_terms(logits, targets), sample_weight)


def bce_on_softmax_per_sample(logits, targets, sample_weight=None):
    """`(N,)`: `w_i * (-(1/K) sum_k [t log p + (1-t) log(1-p)])`; its mean is
    `bce_on_softmax` (up to float32 rounding)."""
    return -_per_sample(_bce_terms(logits, targets), sample_weight)


def _clamped_log(v):
    positive = v > 0
    safe = ops.where(positive, v, ops.ones_like(v))
    return ops.where(positive, ops.maximum(ops.log(safe), -100.0), -100.0)


def _ce_terms(logits, targets):
    logits = ops.cast(logits, "float32")
    targets = ops.cast(targets, "float32")
    return ops.categorical_crossentropy(targets, logits, from_logits=True)


def softmax_ce(logits, targets, sample_weight=None):
    """Softmax cross-entropy with (possibly mixed) target distributions, mean over N."""
    return _reduce(_ce_terms(logits, targets), sample_weight)


def softmax_ce_per_sample(logits, targets, sample_weight=None):
    """`(N,)`: `w_i * (-sum_k t log softmax(z))`; its mean is `softmax_ce`."""
    return _per_sample(_ce_terms(logits, targets), sample_weight)


def smooth_labels(targets, label_smoothing):
    """Label smoothing: `(1 - eps) y + eps / K` for targets `(N, K)`.

    `eps = 0` returns `targets` itself (no op, so nothing changes by a bit).
    """
    eps = check_label_smoothing(label_smoothing)
    if eps == 0.0:
        return targets
    targets = ops.cast(targets, "float32")
    num_classes = targets.shape[-1]
    if num_classes is None:
        num_classes = ops.cast(ops.shape(targets)[-1], "float32")
    return (1.0 - eps) * targets + eps / num_classes


LOSS_FUNCTIONS = {"bce": bce_on_softmax, "ce": softmax_ce}
"""The losses by their `loss` option name (`patchup_tf.rules.LOSSES`)."""

PER_SAMPLE_LOSSES = {"bce": bce_on_softmax_per_sample, "ce": softmax_ce_per_sample}
"""Their per-sample forms, `(N,)`, by the same names."""
