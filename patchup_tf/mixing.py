"""Pure batch operations of PatchUp and the methods it is compared with.

Every function works on NHWC tensors, runs inside `tf.function` (with or
without XLA) and draws its randomness from TF stateless ops, so the same
`seed` always gives the same result. The formulas are those of SPEC.md
(PatchUp, Faramarzi et al., https://arxiv.org/abs/2006.07794, and the
PyTorch reference https://github.com/chandar-lab/PatchUp):

* Mixup (https://arxiv.org/abs/1710.09412) and Manifold Mixup
  (https://arxiv.org/abs/1806.05236): `x' = lam x + (1 - lam) x[perm]`.
* CutMix (https://arxiv.org/abs/1905.04899): one box for the batch, `u`
  the exact kept-pixel fraction after clipping.
* Cutout (https://arxiv.org/abs/1708.04552): one square hole per image.
* DropBlock (https://arxiv.org/abs/1810.12890).
* PatchUp, soft and hard: one `(H, W, C)` block mask for the whole batch.
"""

import collections
import math
import numbers

import tensorflow as tf

MixResult = collections.namedtuple(
    "MixResult", ["features", "y_a", "y_b", "y_mix", "u", "holes"]
)
MixResult.__doc__ = """What a mixing op returns.

Fields:
    features: the mixed batch, same shape and dtype as the input.
    y_a: targets of the first sample of each pair (the batch's own).
    y_b: targets of the partner (`y[perm]`; for soft PatchUp the Mixup of both).
    y_mix: the re-weighted targets of the mixed sample.
    u: scalar float32, the unchanged share (`lam` for Mixup, the kept-pixel
        fraction for CutMix, `1 - mean(holes)` for PatchUp).
    holes: the binary `(H, W, C)` PatchUp mask, or None.
"""

PATCHUP_MODES = ("soft", "hard")


def _invalid(name, expected, value):
    return ValueError(
        f"Invalid value received for argument `{name}`. Expected {expected}. "
        f"Received: {name}={value!r}"
    )


def as_seed(seed):
    """Returns `seed` (a Python int or a shape-[2] integer tensor) as int32[2].

    Both entries are made non-negative (sign bit cleared): TF's stateless
    kernels sign-extend an int32 seed while their XLA kernels zero-extend
    it, so a negative entry would draw differently under `jit_compile`.
    """
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        return tf.constant([int(seed) % (2**31), 0], tf.int32)
    if seed is None or isinstance(seed, (bool, float, str)):
        raise _invalid("seed", "a Python int or a shape-[2] integer tensor", seed)
    seed = tf.convert_to_tensor(seed)
    if not seed.dtype.is_integer or seed.shape.rank != 1 or seed.shape[0] != 2:
        raise _invalid(
            "seed", "a Python int or a shape-[2] integer tensor", seed
        )
    return _non_negative(tf.cast(seed, tf.int32))


def _non_negative(seed):
    return tf.bitwise.bitwise_and(seed, tf.constant(0x7FFFFFFF, seed.dtype))


def split_seed(seed, num):
    """Returns `num` independent int32[2] seeds (non-negative) derived from `seed`."""
    return tf.unstack(
        _non_negative(
            tf.random.experimental.stateless_split(as_seed(seed), num=num)
        )
    )


def _check_features(features, name="features"):
    features = tf.convert_to_tensor(features)
    if features.shape.rank != 4:
        raise _invalid(
            name, "a 4-D NHWC tensor (batch, height, width, channels)",
            f"<tensor of shape {features.shape}>",
        )
    if not features.dtype.is_floating:
        raise _invalid(
            name, "a floating-point tensor", f"<tensor of dtype {features.dtype}>"
        )
    return features


def _check_targets(targets, features):
    targets = tf.convert_to_tensor(targets)
    if targets.shape.rank != 2:
        raise _invalid(
            "targets", "one-hot float targets of shape (batch, classes)",
            f"<tensor of shape {targets.shape}>",
        )
    n_x, n_y = features.shape[0], targets.shape[0]
    if n_x is not None and n_y is not None and n_x != n_y:
        raise _invalid(
            "targets",
            f"as many rows as the features' batch size ({n_x})",
            f"<tensor of shape {targets.shape}>",
        )
    return tf.cast(targets, tf.float32)


def _check_prob(name, value, allow_zero=False):
    interval = "[0, 1]" if allow_zero else "(0, 1]"
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise _invalid(name, f"a float in {interval}", value)
    lower_ok = value >= 0 if allow_zero else value > 0
    if not (lower_ok and value <= 1):
        raise _invalid(name, f"a float in {interval}", value)
    return float(value)


def _check_lam(lam):
    """A Python-number `lam` must lie in [0, 1]; tensors pass unchecked."""
    if isinstance(lam, (numbers.Real, bool)):
        _check_prob("lam", lam, allow_zero=True)
    return lam


def _check_block(block_size, height, width):
    if (
        not isinstance(block_size, numbers.Integral)
        or isinstance(block_size, bool)
        or block_size < 1
        or block_size % 2 == 0
    ):
        raise _invalid("block_size", "a positive odd int", block_size)
    if (height is not None and block_size > height) or (
        width is not None and block_size > width
    ):
        raise _invalid(
            "block_size",
            f"an odd int no larger than the feature map ({height}x{width})",
            block_size,
        )
    return int(block_size)


def beta(alpha, seed, shape=()):
    """Draws `Beta(alpha, alpha)` as `g1 / (g1 + g2)`, `g_i ~ Gamma(alpha, 1)`.

    `alpha <= 0` means no mixing: every draw is 1.0 (the reference's
    `get_lambda`). Returns float32.
    """
    if (
        not isinstance(alpha, numbers.Real)
        or isinstance(alpha, bool)
        or not math.isfinite(alpha)
    ):
        raise _invalid("alpha", "a finite float (<= 0 disables mixing)", alpha)
    shape = tuple(shape)
    if alpha <= 0:
        return tf.ones(shape, tf.float32)
    s1, s2 = split_seed(seed, 2)
    g1 = tf.random.stateless_gamma(shape, s1, alpha=float(alpha), dtype=tf.float32)
    g2 = tf.random.stateless_gamma(shape, s2, alpha=float(alpha), dtype=tf.float32)
    # g1 + g2 > 0 almost surely; the guard keeps tiny alphas finite.
    return tf.math.divide_no_nan(g1, g1 + g2)


def _uniform(shape, seed):
    """Stateless float32 draws in [0, 1), the same with and without XLA.

    `tf.random.stateless_uniform` for floats converts its random bits
    differently in the XLA kernel than in the TF kernel, so a compiled step
    would draw other masks than an eager one from the same seed; the uint32
    bits agree, so the floats are formed from their top 24 bits here.
    """
    bits = tf.random.stateless_uniform(
        shape, as_seed(seed), minval=None, maxval=None, dtype=tf.uint32
    )
    return tf.cast(tf.bitwise.right_shift(bits, 8), tf.float32) * (2.0**-24)


def permutation(n, seed):
    """A uniformly random permutation of `0..n-1` (int32), from `seed`."""
    keys = _uniform([n], seed)
    return tf.argsort(keys, stable=True)


def _mix_targets(targets, perm, lam):
    y_b = tf.gather(targets, perm)
    return targets, y_b, lam * targets + (1.0 - lam) * y_b


def mixup(features, targets, *, lam, perm):
    """Mixup: `x' = lam x + (1-lam) x[perm]`, `y_mix = lam y + (1-lam) y[perm]`.

    `u = lam`; `y_a = y`, `y_b = y[perm]`.
    """
    features = _check_features(features)
    targets = _check_targets(targets, features)
    lam = tf.cast(_check_lam(lam), tf.float32)
    lam_x = tf.cast(lam, features.dtype)
    mixed = lam_x * features + (1 - lam_x) * tf.gather(features, perm)
    y_a, y_b, y_mix = _mix_targets(targets, perm, lam)
    return MixResult(mixed, y_a, y_b, y_mix, lam, None)


def cutmix_box(height, width, lam, seed):
    """SPEC's CutMix box `(y1, y2, x1, x2)` (int32, half-open) for `lam`.

    `cut = floor(side * sqrt(1 - lam))`, centre uniform over the pixels,
    `[c - cut//2, c + cut//2)` clipped to the image.
    """
    # float64, as the reference's NumPy: in float32 `side * ratio` can fall
    # just below an integer that float64 reaches, and the cut loses a pixel.
    ratio = tf.sqrt(1.0 - tf.cast(tf.cast(lam, tf.float32), tf.float64))
    cut_h = tf.cast(tf.floor(tf.cast(height, tf.float64) * ratio), tf.int32)
    cut_w = tf.cast(tf.floor(tf.cast(width, tf.float64) * ratio), tf.int32)
    s_y, s_x = split_seed(seed, 2)
    cy = tf.random.stateless_uniform([], s_y, 0, height, dtype=tf.int32)
    cx = tf.random.stateless_uniform([], s_x, 0, width, dtype=tf.int32)
    y1 = tf.clip_by_value(cy - cut_h // 2, 0, height)
    y2 = tf.clip_by_value(cy + cut_h // 2, 0, height)
    x1 = tf.clip_by_value(cx - cut_w // 2, 0, width)
    x2 = tf.clip_by_value(cx + cut_w // 2, 0, width)
    return y1, y2, x1, x2


def _box_mask(height, width, y1, y2, x1, x2):
    """Boolean mask, shape `(..., H, W)`, true inside rows [y1, y2), cols [x1, x2)."""
    rows = tf.range(height)
    cols = tf.range(width)
    in_rows = (rows >= y1[..., None]) & (rows < y2[..., None])
    in_cols = (cols >= x1[..., None]) & (cols < x2[..., None])
    return in_rows[..., :, None] & in_cols[..., None, :]


def cutmix(images, targets, *, lam, perm, seed):
    """CutMix: ONE box for the batch pasted from `x[perm]`.

    The box comes from `lam` (`cutmix_box`); then `u` is reset to the exact
    kept fraction `1 - box_area / (H W)`, `y_mix = u y + (1-u) y[perm]`.
    """
    images = _check_features(images, "images")
    targets = _check_targets(targets, images)
    _check_lam(lam)
    shape = tf.shape(images)
    height, width = shape[1], shape[2]
    y1, y2, x1, x2 = cutmix_box(height, width, lam, seed)
    box = _box_mask(height, width, y1, y2, x1, x2)[None, :, :, None]
    mixed = tf.where(box, tf.gather(images, perm), images)
    # In float64: graph mode may turn a float32 division by the (constant)
    # H W into a multiplication by its reciprocal, one ulp off the eager value.
    area = tf.cast((y2 - y1) * (x2 - x1), tf.float64)
    u = tf.cast(1.0 - area / tf.cast(height * width, tf.float64), tf.float32)
    y_a, y_b, y_mix = _mix_targets(targets, perm, u)
    return MixResult(mixed, y_a, y_b, y_mix, u, None)


def cutout_mask(batch_size, height, width, size, seed):
    """Keep-mask `(N, H, W)` (bool) with one `size`-square hole per image.

    Per image a centre `(cy, cx)` is drawn uniformly over the pixels; rows
    `[floor(cy - size/2), floor(cy + size/2))` and the same for columns are
    dropped, clipped at the borders (the reference's integer rounding).
    """
    s_y, s_x = split_seed(seed, 2)
    cy = tf.random.stateless_uniform([batch_size], s_y, 0, height, dtype=tf.int32)
    cx = tf.random.stateless_uniform([batch_size], s_x, 0, width, dtype=tf.int32)
    half = size / 2.0

    def bounds(centre, limit):
        centre = tf.cast(centre, tf.float32)
        lo = tf.cast(tf.floor(centre - half), tf.int32)
        hi = tf.cast(tf.floor(centre + half), tf.int32)
        return tf.clip_by_value(lo, 0, limit), tf.clip_by_value(hi, 0, limit)

    y1, y2 = bounds(cy, height)
    x1, x2 = bounds(cx, width)
    return tf.logical_not(_box_mask(height, width, y1, y2, x1, x2))


def cutout(images, *, size, seed):
    """Cutout: multiplies one `size`-square hole per image by 0 (own position each)."""
    images = _check_features(images, "images")
    if not isinstance(size, numbers.Integral) or isinstance(size, bool) or size < 0:
        raise _invalid("size", "an int >= 0 (the hole's side in pixels)", size)
    shape = tf.shape(images)
    keep = cutout_mask(shape[0], shape[1], shape[2], int(size), seed)
    return images * tf.cast(keep, images.dtype)[..., None]


def adjusted_gamma(gamma, block_size, height, width):
    """`gamma * H W / (b^2 (H - b + 1)(W - b + 1))`.

    SPEC's `gamma W^2 / (b^2 (W - b + 1)^2)` on square maps; its natural
    extension (timm's) on non-square ones.
    """
    b = block_size
    return gamma * height * width / (b * b * (height - b + 1) * (width - b + 1))


def block_holes(shape, rate, block_size, seed):
    """Binary float32 holes: Bernoulli(`rate`) seeds grown into `b x b` blocks.

    `shape` is `(N, H, W, C)`; each seed becomes the square centred on it
    (`max_pool(size b, stride 1, same padding)`).
    """
    seeds = tf.cast(_uniform(shape, seed) < rate, tf.float32)
    return tf.nn.max_pool2d(seeds, block_size, 1, "SAME")


def _static_hw(features):
    height, width = features.shape[1], features.shape[2]
    if height is None or width is None:
        raise _invalid(
            "features", "a tensor with static height and width",
            f"<tensor of shape {features.shape}>",
        )
    return int(height), int(width)


def dropblock(features, *, keep_prob, block_size, seed):
    """DropBlock: `mask * x * (mask.size / sum(mask))`, `mask = 1 - holes`.

    Seeds are drawn for every element with `gamma = (1 - keep_prob) W^2 /
    (b^2 (W - b + 1)^2)` computed from this map. If every unit were
    dropped the scale is taken as `mask.size` (never inf).
    """
    features = _check_features(features)
    keep_prob = _check_prob("keep_prob", keep_prob)
    height, width = _static_hw(features)
    block_size = _check_block(block_size, height, width)
    if keep_prob == 1.0:
        return features
    rate = adjusted_gamma(1.0 - keep_prob, block_size, height, width)
    mask = 1.0 - block_holes(tf.shape(features), rate, block_size, seed)
    scale = tf.cast(tf.size(mask), tf.float32) / tf.maximum(
        tf.reduce_sum(mask), 1.0
    )
    return features * tf.cast(mask * scale, features.dtype)


def patchup(features, targets, *, mode, gamma, block_size, lam, perm, seed):
    """PatchUp on a feature map: one `(H, W, C)` block mask for the batch.

    `holes` from Bernoulli(`gamma_adj`) seeds grown into `b x b` blocks,
    `q = mean(holes)`, `u = 1 - q`.
    hard: `x' = (1-holes) x + holes x[perm]`, `y_b = y[perm]`;
    soft: `x' = (1-holes) x + holes (lam x + (1-lam) x[perm])`,
    `y_b = lam y + (1-lam) y[perm]`; both `y_a = y`, `y_mix = u y + q y_b`.
    """
    if mode not in PATCHUP_MODES:
        raise _invalid("mode", "one of 'soft', 'hard'", mode)
    features = _check_features(features)
    targets = _check_targets(targets, features)
    gamma = _check_prob("gamma", gamma)
    _check_lam(lam)
    height, width = _static_hw(features)
    block_size = _check_block(block_size, height, width)
    channels = features.shape[3]
    rate = adjusted_gamma(gamma, block_size, height, width)
    holes = block_holes([1, height, width, channels], rate, block_size, seed)[0]
    # In float64, as CutMix's `u`, so that eager, graph and XLA agree exactly.
    q64 = tf.reduce_sum(tf.cast(holes, tf.float64)) / float(height * width * channels)
    q = tf.cast(q64, tf.float32)
    u = tf.cast(1.0 - q64, tf.float32)
    partner = tf.gather(features, perm)
    y_shuffled = tf.gather(targets, perm)
    if mode == "hard":
        patch = partner
        y_b = y_shuffled
    else:
        lam = tf.cast(lam, tf.float32)
        lam_x = tf.cast(lam, features.dtype)
        patch = lam_x * features + (1 - lam_x) * partner
        y_b = lam * targets + (1.0 - lam) * y_shuffled
    mixed = tf.where(tf.cast(holes, tf.bool), patch, features)
    y_mix = u * targets + q * y_b
    return MixResult(mixed, targets, y_b, y_mix, u, holes)


def patchup_block_size(width, block_size=7):
    """SPEC's block for a map of this width: `block_size` (7) on 32-wide maps,
    5 on 16-wide, 3 on 8-wide and smaller; never above `block_size` or the
    largest odd number <= width."""
    if width >= 32:
        b = block_size
    elif width >= 16:
        b = min(block_size, 5)
    else:
        b = min(block_size, 3)
    largest_odd = width if width % 2 else width - 1
    return max(1, min(b, largest_odd))


def bce_on_softmax(logits, targets):
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
    return -tf.reduce_mean(targets * log_p + (1.0 - targets) * log_1mp)


def _clamped_log(v):
    positive = v > 0
    safe = tf.where(positive, v, tf.ones_like(v))
    return tf.where(positive, tf.maximum(tf.math.log(safe), -100.0), -100.0)


def softmax_ce(logits, targets):
    """Softmax cross-entropy with (possibly mixed) target distributions, mean over N."""
    logits = tf.cast(logits, tf.float32)
    targets = tf.cast(targets, tf.float32)
    return tf.reduce_mean(
        tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=logits)
    )


LOSSES = {"bce": bce_on_softmax, "ce": softmax_ce}

