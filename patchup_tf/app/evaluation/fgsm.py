"""FGSM robustness evaluation (`docs/methods.md`, "Evaluation suites").

For a batch `x` with labels `y`, with the model in inference mode:
`g = grad_x mean CE(model(x), y)`, `x_adv = x + eps * sign(g)`, clipped to
the batch's scalar range `[min(x), max(x)]` (over all images and channels of
the batch), then the perturbation `x_adv - x` clipped to `[-eps, eps]`, as in
the reference `utility/adversarial_attack.py`.
"""

import weakref

import tensorflow as tf

from patchup_tf.app.evaluation.metrics import (
    cached_per_model,
    cross_entropy_per_sample,
    hard_labels,
    sum_over_batches,
)
from patchup_tf.app.constants import FGSM_EPS as DEFAULT_EPS  # the paper's sweep
from patchup_tf.app.constants import is_fgsm_eps

__all__ = ["DEFAULT_EPS", "fgsm", "fgsm_sweep"]

# model -> (attack, attack_and_score), compiled once per model.
_FN_CACHE = weakref.WeakKeyDictionary()


def _check_eps(eps):
    if not is_fgsm_eps(eps):
        raise ValueError(
            "Invalid value received for argument `eps`. Expected a number "
            f">= 0. Received: eps={eps!r}"
        )
    return float(eps)


def _attack(model, images, targets, eps):
    """Graph body of FGSM; `eps` is a scalar tensor of the images' dtype."""
    with tf.GradientTape() as tape:
        tape.watch(images)
        logits = model(images, training=False)
        loss = tf.reduce_mean(cross_entropy_per_sample(logits, targets))
    grad = tape.gradient(loss, images)
    lo = tf.reduce_min(images)
    hi = tf.reduce_max(images)
    adv = tf.clip_by_value(images + eps * tf.sign(grad), lo, hi)
    perturb = tf.clip_by_value(adv - images, -eps, eps)
    return images + perturb


def _compiled(model):
    return cached_per_model(_FN_CACHE, model, _build_attack_fns)


def _build_attack_fns(model):
    @tf.function(reduce_retracing=True)
    def attack(images, targets, eps):
        return _attack(model, images, targets, eps)

    @tf.function(reduce_retracing=True)
    def attack_and_score(images, targets, eps):
        adv = _attack(model, images, targets, eps)
        logits = tf.cast(model(adv, training=False), tf.float32)
        loss = cross_entropy_per_sample(logits, targets)
        pred = tf.argmax(logits, axis=-1, output_type=tf.int64)
        correct = tf.equal(pred, hard_labels(targets))
        return (
            tf.reduce_sum(tf.cast(loss, tf.float64)),
            tf.reduce_sum(tf.cast(correct, tf.float64)),
            tf.cast(tf.shape(pred)[0], tf.float64),
        )

    return attack, attack_and_score


def _as_inputs(images, eps):
    images = tf.convert_to_tensor(images)
    if not images.dtype.is_floating:
        images = tf.cast(images, tf.float32)
    return images, tf.constant(eps, dtype=images.dtype)


def fgsm(model, images, labels, eps):
    """FGSM adversarial images for one batch (compiled; no retrace per eps).

    Args:
        model: callable images -> logits, called with `training=False`.
        images: float batch `(N, H, W, C)` (normalised inputs).
        labels: one-hot `(N, K)` or integer `(N,)` labels.
        eps: perturbation size, a number >= 0.

    Returns:
        The adversarial batch, a tensor of the images' shape and dtype.
    """
    eps = _check_eps(eps)
    attack, _ = _compiled(model)
    images, eps_t = _as_inputs(images, eps)
    return attack(images, tf.convert_to_tensor(labels), eps_t)


def fgsm_sweep(model, dataset, eps_list=DEFAULT_EPS):
    """Accuracy (%) and mean CE under FGSM for every eps in `eps_list`.

    `dataset` yields `(images, targets)` batches (the trainer passes the
    unshuffled test set in batches of 100); each batch is attacked with its
    own gradient and its own `[min, max]` range, in the dataset's order.

    Returns:
        list of `{"eps": float, "accuracy": float, "loss": float}`, one per
        eps, in the order of `eps_list`.
    """
    eps_values = [_check_eps(e) for e in eps_list]
    _, attack_and_score = _compiled(model)
    results = []
    for eps in eps_values:

        def batch_sums(images, targets, eps=eps):
            images, eps_t = _as_inputs(images, eps)
            return attack_and_score(images, tf.convert_to_tensor(targets), eps_t)

        loss_sum, correct, count = sum_over_batches(batch_sums, dataset)
        results.append(
            {"eps": eps, "accuracy": 100.0 * correct / count, "loss": loss_sum / count}
        )
    return results
