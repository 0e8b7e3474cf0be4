"""Pure batch operations of PatchUp and the methods it is compared with.

Every function works on NHWC tensors, runs inside `tf.function` (with or
without XLA) and draws its randomness from TF stateless ops, so the same
`seed` always gives the same result. The formulas are stated in
`docs/methods.md` (PatchUp, Faramarzi et al.,
https://arxiv.org/abs/2006.07794, ported from the PyTorch original
https://github.com/chandar-lab/PatchUp):

* Mixup (https://arxiv.org/abs/1710.09412) and Manifold Mixup
  (https://arxiv.org/abs/1806.05236): `x' = lam x + (1 - lam) x[perm]`.
* CutMix (https://arxiv.org/abs/1905.04899): one box for the batch, `u`
  the exact kept-pixel fraction after clipping.
* Cutout (https://arxiv.org/abs/1708.04552): one square hole per image.
* DropBlock (https://arxiv.org/abs/1810.12890).
* PatchUp, soft and hard: one `(H, W, C)` block mask for the whole batch.
* Mixup or CutMix (timm's switch): per batch, or per image.

Per-image draws: `lam` may be a scalar (the papers' one draw per batch) or
a `(N,)` tensor, one value per image; then Mixup mixes image `i` with
`lam[i]`, CutMix draws one box per image and PatchUp (`per_sample=True`)
one mask per image, and `u` has shape `(N,)`. A scalar `lam` computes
exactly what it always did.
"""

import collections
import numbers

import tensorflow as tf

from patchup_tf.rules import (
    check_alpha,
    check_block,
    check_hole_size,
    check_patchup_mode,
    check_prob,
    invalid,
)

class MixResult(
    collections.namedtuple("MixResult", ["features", "y_a", "y_b", "y_mix", "u", "holes"],
                           defaults=[None])
):
    """What a mixing op returns, and what the loss reads.

Fields:
    features: the mixed batch, same shape and dtype as the input.
    y_a: targets of the first sample of each pair (the batch's own).
    y_b: targets of the partner (`y[perm]`; for soft PatchUp the Mixup of both).
    y_mix: the re-weighted targets of the mixed sample.
    u: float32, the unchanged share (`lam` for Mixup, the kept-pixel
        fraction for CutMix, `1 - mean(holes)` for PatchUp): a scalar, or
        `(N,)` with per-image draws.
    holes: the binary PatchUp mask, `(H, W, C)` (`(N, H, W, C)` per
        image), or None.
    """

    __slots__ = ()

    @classmethod
    def clean(cls, features, targets):
        """An unmixed batch: `y_a = y_b = y_mix = y`, `u = 1`."""
        targets = tf.cast(targets, tf.float32)
        return cls(features, targets, targets, targets, tf.constant(1.0, tf.float32))


def as_seed(seed):
    """Returns `seed` (a Python int or a shape-[2] integer tensor) as int32[2].

    Both entries are made non-negative (sign bit cleared): TF's stateless
    kernels sign-extend an int32 seed while their XLA kernels zero-extend
    it, so a negative entry would draw differently under `jit_compile`.
    """
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        return tf.constant([int(seed) % (2**31), 0], tf.int32)
    if seed is None or isinstance(seed, (bool, float, str)):
        raise invalid("seed", "a Python int or a shape-[2] integer tensor", seed)
    seed = tf.convert_to_tensor(seed)
    if not seed.dtype.is_integer or seed.shape.rank != 1 or seed.shape[0] != 2:
        raise invalid(
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


def check_features(features, name="features"):
    features = tf.convert_to_tensor(features)
    if features.shape.rank != 4:
        raise invalid(
            name, "a 4-D NHWC tensor (batch, height, width, channels)",
            f"<tensor of shape {features.shape}>",
        )
    if not features.dtype.is_floating:
        raise invalid(
            name, "a floating-point tensor", f"<tensor of dtype {features.dtype}>"
        )
    return features


def _check_targets(targets, features):
    targets = tf.convert_to_tensor(targets)
    if targets.shape.rank != 2:
        raise invalid(
            "targets", "one-hot float targets of shape (batch, classes)",
            f"<tensor of shape {targets.shape}>",
        )
    n_x, n_y = features.shape[0], targets.shape[0]
    if n_x is not None and n_y is not None and n_x != n_y:
        raise invalid(
            "targets",
            f"as many rows as the features' batch size ({n_x})",
            f"<tensor of shape {targets.shape}>",
        )
    return tf.cast(targets, tf.float32)


def _check_lam(lam):
    """A Python-number `lam` must lie in [0, 1]; a tensor must be a scalar
    or `(N,)` (one value per image); its values pass unchecked."""
    if isinstance(lam, (numbers.Real, bool)):
        check_prob("lam", lam, allow_zero=True)
        return lam
    rank = tf.convert_to_tensor(lam).shape.rank
    if rank not in (0, 1):
        raise invalid("lam", "a scalar or a (N,) tensor (one value per image)",
                      f"<tensor of rank {rank}>")
    return lam


def _per_image(value, rank):
    """`value` as is if it is a scalar, else `(N,)` reshaped to broadcast
    against a rank-`rank` tensor `(N, ...)`."""
    if value.shape.rank == 0:
        return value
    return tf.reshape(value, [-1] + [1] * (rank - 1))


def derive_seed(seed, index):
    """A non-negative int32[2] seed `fold_in(seed, index)`, independent of
    `split_seed(seed, n)`'s."""
    return _non_negative(tf.random.experimental.stateless_fold_in(as_seed(seed), index))


def beta(alpha, seed, shape=()):
    """Draws `Beta(alpha, alpha)` as `g1 / (g1 + g2)`, `g_i ~ Gamma(alpha, 1)`.

    `alpha <= 0` means no mixing: every draw is 1.0 (the reference's
    `get_lambda`). Returns float32.
    """
    alpha = check_alpha(alpha)
    shape = tuple(shape)
    if alpha <= 0:
        return tf.ones(shape, tf.float32)
    s1, s2 = split_seed(seed, 2)
    g1 = tf.random.stateless_gamma(shape, s1, alpha=float(alpha), dtype=tf.float32)
    g2 = tf.random.stateless_gamma(shape, s2, alpha=float(alpha), dtype=tf.float32)
    # g1 + g2 > 0 almost surely; the guard keeps tiny alphas finite.
    return tf.math.divide_no_nan(g1, g1 + g2)


def uniform(shape, seed):
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
    keys = uniform([n], seed)
    return tf.argsort(keys, stable=True)


def _mix_targets(targets, perm, lam):
    y_b = tf.gather(targets, perm)
    lam = _per_image(lam, 2)
    return targets, y_b, lam * targets + (1.0 - lam) * y_b


def mixup(features, targets, *, lam, perm):
    """Mixup: `x' = lam x + (1-lam) x[perm]`, `y_mix = lam y + (1-lam) y[perm]`.

    `u = lam`; `y_a = y`, `y_b = y[perm]`. A `(N,)` `lam` mixes image `i`
    with `lam[i]`.
    """
    features = check_features(features)
    targets = _check_targets(targets, features)
    lam = tf.cast(_check_lam(lam), tf.float32)
    lam_x = _per_image(tf.cast(lam, features.dtype), 4)
    mixed = lam_x * features + (1 - lam_x) * tf.gather(features, perm)
    y_a, y_b, y_mix = _mix_targets(targets, perm, lam)
    return MixResult(mixed, y_a, y_b, y_mix, lam)


def cutmix_box(height, width, lam, seed):
    """The CutMix box `(y1, y2, x1, x2)` (int32, half-open) for `lam`.

    `cut = floor(side * sqrt(1 - lam))`, centre uniform over the pixels,
    `[c - cut//2, c + cut//2)` clipped to the image. A `(N,)` `lam` gives
    `(N,)` coordinates: one box per image, each with its own centre.
    """
    # float64, as the reference's NumPy: in float32 `side * ratio` can fall
    # just below an integer that float64 reaches, and the cut loses a pixel.
    ratio = tf.sqrt(1.0 - tf.cast(tf.cast(lam, tf.float32), tf.float64))
    cut_h = tf.cast(tf.floor(tf.cast(height, tf.float64) * ratio), tf.int32)
    cut_w = tf.cast(tf.floor(tf.cast(width, tf.float64) * ratio), tf.int32)
    s_y, s_x = split_seed(seed, 2)
    shape = [] if ratio.shape.rank == 0 else tf.shape(ratio)
    cy = tf.random.stateless_uniform(shape, s_y, 0, height, dtype=tf.int32)
    cx = tf.random.stateless_uniform(shape, s_x, 0, width, dtype=tf.int32)
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
    """CutMix: ONE box for the batch pasted from `x[perm]` (one box per
    image for a `(N,)` `lam`).

    The box comes from `lam` (`cutmix_box`); then `u` is reset to the exact
    kept fraction `1 - box_area / (H W)`, `y_mix = u y + (1-u) y[perm]`.
    """
    images = check_features(images, "images")
    targets = _check_targets(targets, images)
    _check_lam(lam)
    shape = tf.shape(images)
    box = cutmix_box(shape[1], shape[2], lam, seed)
    return paste_box(images, targets, perm=perm, box=box)


def paste_box(images, targets, *, perm, box):
    """Pastes `box = (y1, y2, x1, x2)` (half-open rows and columns; scalars
    for one box, `(N,)` for one per image) of `x[perm]` into `x`.

    `u = 1 - box_area / (H W)` (scalar or `(N,)`), `y_a = y`,
    `y_b = y[perm]`, `y_mix = u y + (1-u) y[perm]`.
    """
    images = check_features(images, "images")
    targets = _check_targets(targets, images)
    shape = tf.shape(images)
    height, width = shape[1], shape[2]
    y1, y2, x1, x2 = (tf.convert_to_tensor(c, tf.int32) for c in box)
    mask = _box_mask(height, width, y1, y2, x1, x2)
    mask = mask[None, :, :, None] if mask.shape.rank == 2 else mask[..., None]
    mixed = tf.where(mask, tf.gather(images, perm), images)
    # In float64: graph mode may turn a float32 division by the (constant)
    # H W into a multiplication by its reciprocal, one ulp off the eager value.
    area = tf.cast((y2 - y1) * (x2 - x1), tf.float64)
    u = tf.cast(1.0 - area / tf.cast(height * width, tf.float64), tf.float32)
    y_a, y_b, y_mix = _mix_targets(targets, perm, u)
    return MixResult(mixed, y_a, y_b, y_mix, u)


def mixup_cutmix(images, targets, *, lam, perm, use_cutmix, seed):
    """CutMix where `use_cutmix`, else Mixup, with the same `lam` and `perm`.

    `use_cutmix` a scalar bool: one op for the batch (`tf.cond`); `(N,)`:
    image `i` is `cutmix(...)[i]` if `use_cutmix[i]`, else `mixup(...)[i]`
    (both ops run; `lam`, then, is usually `(N,)` too). `y_a = y`,
    `y_b = y[perm]`; `u` and `y_mix` are those of the op taken.
    """
    images = check_features(images, "images")
    targets = _check_targets(targets, images)
    use = tf.convert_to_tensor(use_cutmix)
    if use.dtype != tf.bool or use.shape.rank not in (0, 1):
        raise invalid("use_cutmix", "a bool scalar or a (N,) bool tensor",
                      f"<tensor of dtype {use.dtype} and shape {use.shape}>")

    def by_cutmix():
        return cutmix(images, targets, lam=lam, perm=perm, seed=seed)

    def by_mixup():
        return mixup(images, targets, lam=lam, perm=perm)

    if use.shape.rank == 0:
        return tf.cond(use, by_cutmix, by_mixup)
    cut, mix = by_cutmix(), by_mixup()
    u_cut = tf.broadcast_to(cut.u, tf.shape(use))
    u_mix = tf.broadcast_to(mix.u, tf.shape(use))
    return MixResult(
        tf.where(_per_image(use, 4), cut.features, mix.features), cut.y_a, cut.y_b,
        tf.where(_per_image(use, 2), cut.y_mix, mix.y_mix), tf.where(use, u_cut, u_mix),
    )


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
    images = check_features(images, "images")
    size = check_hole_size("size", size)
    shape = tf.shape(images)
    keep = cutout_mask(shape[0], shape[1], shape[2], size, seed)
    return images * tf.cast(keep, images.dtype)[..., None]


def adjusted_gamma(gamma, block_size, height, width):
    """`gamma * H W / (b^2 (H - b + 1)(W - b + 1))`.

    The paper's `gamma W^2 / (b^2 (W - b + 1)^2)` on square maps; its natural
    extension (timm's) on non-square ones.
    """
    b = block_size
    return gamma * height * width / (b * b * (height - b + 1) * (width - b + 1))


def block_holes(shape, rate, block_size, seed):
    """Binary float32 holes: Bernoulli(`rate`) seeds grown into `b x b` blocks.

    `shape` is `(N, H, W, C)`; each seed becomes the square centred on it
    (`max_pool(size b, stride 1, same padding)`).
    """
    seeds = tf.cast(uniform(shape, seed) < rate, tf.float32)
    return tf.nn.max_pool2d(seeds, block_size, 1, "SAME")


def static_hw(features):
    height, width = features.shape[1], features.shape[2]
    if height is None or width is None:
        raise invalid(
            "features", "a tensor with static height and width",
            f"<tensor of shape {features.shape}>",
        )
    return int(height), int(width)


def dropblock(features, *, keep_prob, block_size, seed, per_sample=False):
    """DropBlock: `mask * x * (mask.size / sum(mask))`, `mask = 1 - holes`.

    Seeds are drawn for every element with `gamma = (1 - keep_prob) W^2 /
    (b^2 (W - b + 1)^2)` computed from this map. If every unit were
    dropped the scale is taken as `mask.size` (never inf). With
    `per_sample`, each image is rescaled by its own `H W C / sum(mask_i)`
    (the mask is drawn per element either way).
    """
    features = check_features(features)
    keep_prob = check_prob("keep_prob", keep_prob)
    height, width = static_hw(features)
    block_size = check_block(block_size, height, width)
    if keep_prob == 1.0:
        return features
    rate = adjusted_gamma(1.0 - keep_prob, block_size, height, width)
    mask = 1.0 - block_holes(tf.shape(features), rate, block_size, seed)
    if per_sample:
        size = float(height * width * features.shape[3])
        scale = size / tf.maximum(tf.reduce_sum(mask, axis=[1, 2, 3], keepdims=True), 1.0)
        return features * tf.cast(mask * scale, features.dtype)
    scale = tf.cast(tf.size(mask), tf.float32) / tf.maximum(
        tf.reduce_sum(mask), 1.0
    )
    return features * tf.cast(mask * scale, features.dtype)


def patchup_holes(height, width, channels, gamma, block_size, seed, batch_size=None):
    """PatchUp's binary float32 `(H, W, C)` holes, ONE mask for the batch:
    Bernoulli(`gamma_adj`) seeds grown into `b x b` blocks. With
    `batch_size`, `(N, H, W, C)` holes: one mask per image."""
    rate = adjusted_gamma(gamma, block_size, height, width)
    if batch_size is not None:
        return block_holes([batch_size, height, width, channels], rate, block_size, seed)
    return block_holes([1, height, width, channels], rate, block_size, seed)[0]


def patchup(features, targets, *, mode, gamma, block_size, lam, perm, seed, per_sample=False):
    """PatchUp on a feature map: one `(H, W, C)` block mask for the batch
    (`per_sample`: one `(H, W, C)` mask per image, `holes` `(N, H, W, C)`).

    `holes` from Bernoulli(`gamma_adj`) seeds grown into `b x b` blocks,
    `q = mean(holes)` (per image with `per_sample`), `u = 1 - q`; then
    `mix_holes`. `lam` is a scalar or `(N,)`.
    """
    check_patchup_mode(mode)
    features = check_features(features)
    targets = _check_targets(targets, features)
    gamma = check_prob("gamma", gamma)
    _check_lam(lam)
    height, width = static_hw(features)
    block_size = check_block(block_size, height, width)
    channels = features.shape[3]
    batch_size = tf.shape(features)[0] if per_sample else None
    holes = patchup_holes(height, width, channels, gamma, block_size, seed, batch_size)
    return mix_holes(features, targets, mode=mode, holes=holes, lam=lam, perm=perm)


def mix_holes(features, targets, *, mode, holes, lam, perm):
    """PatchUp's mixing given its binary `holes`, `(H, W, C)` for the batch
    or `(N, H, W, C)` per image.

    `q = mean(holes)` (per image for `(N, H, W, C)` holes), `u = 1 - q`.
    hard: `x' = (1-holes) x + holes x[perm]`, `y_b = y[perm]`;
    soft: `x' = (1-holes) x + holes (lam x + (1-lam) x[perm])`,
    `y_b = lam y + (1-lam) y[perm]`; both `y_a = y`, `y_mix = u y + q y_b`.
    """
    check_patchup_mode(mode)
    features = check_features(features)
    targets = _check_targets(targets, features)
    _check_lam(lam)
    height, width = static_hw(features)
    channels = features.shape[3]
    holes = tf.convert_to_tensor(holes, tf.float32)
    # In float64, as CutMix's `u`, so that eager, graph and XLA agree exactly.
    size = float(height * width * channels)
    if holes.shape.rank == 4:
        q64 = tf.reduce_sum(tf.cast(holes, tf.float64), axis=[1, 2, 3]) / size
    else:
        q64 = tf.reduce_sum(tf.cast(holes, tf.float64)) / size
    q = tf.cast(q64, tf.float32)
    u = tf.cast(1.0 - q64, tf.float32)
    partner = tf.gather(features, perm)
    y_shuffled = tf.gather(targets, perm)
    if mode == "hard":
        patch = partner
        y_b = y_shuffled
    else:
        lam = tf.cast(lam, tf.float32)
        lam_x = _per_image(tf.cast(lam, features.dtype), 4)
        patch = lam_x * features + (1 - lam_x) * partner
        lam_y = _per_image(lam, 2)
        y_b = lam_y * targets + (1.0 - lam_y) * y_shuffled
    mixed = tf.where(tf.cast(holes, tf.bool), patch, features)
    y_mix = _per_image(u, 2) * targets + _per_image(q, 2) * y_b
    return MixResult(mixed, targets, y_b, y_mix, u, holes)
