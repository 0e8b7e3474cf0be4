"""Pure batch operations of PatchUp and the methods it is compared with.

Every function works on NHWC tensors of any Keras backend (written in
`keras.ops`), runs traced and compiled (`tf.function`, XLA, `jax.jit`) and
draws its randomness from the stateless ops of `patchup_tf.draws`, so the
same `seed` always gives the same result. The formulas are stated in
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

import keras
import numpy as np
from keras import ops

from patchup_tf import backend, draws
from patchup_tf.draws import rank
from patchup_tf.rules import (
    check_alpha,
    check_block,
    check_hole_size,
    check_patchup_mode,
    check_prob,
    invalid,
)

as_seed = draws.as_seed
split_seed = draws.split
derive_seed = draws.fold_in
uniform = draws.uniform


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
        targets = ops.cast(targets, "float32")
        return cls(features, targets, targets, targets, ops.convert_to_tensor(1.0, "float32"))


def shares(count, size):
    """`(q, u)` float32: `q = count / size`, `u = 1 - q`, for an integer
    `count` (a tensor) of `size` (> 0) elements.

    In float64, so that eager, graph and XLA agree exactly (graph mode may
    turn a float32 division by a constant into a multiplication by its
    reciprocal). Without float64 (JAX's default) `q` and `u` are the
    correctly rounded quotients `count / size` and `(size - count) / size`
    (`rounded_quotient`), which equal the float64 route's for sizes below
    2**24.
    """
    if backend.current().wide_float() == "float64":
        q64 = ops.cast(count, "float64") / ops.cast(size, "float64")
        return ops.cast(q64, "float32"), ops.cast(1.0 - q64, "float32")
    count = ops.cast(count, "int32")
    size = ops.cast(size, "int32")
    return rounded_quotient(count, size), rounded_quotient(size - count, size)


_QUOTIENT_BITS = 24  # float32's significand


def rounded_quotient(numerator, denominator):
    """float32 `numerator / denominator` rounded to nearest (ties to even),
    for int32 tensors `0 <= numerator <= denominator < 2**24`.

    By long division in integers: XLA's float32 division on CPU can be an
    ulp off the rounded quotient.
    """
    d = ops.broadcast_to(denominator, ops.shape(numerator))
    scale = ops.ones(ops.shape(numerator), "float32")
    n, scale, _ = ops.fori_loop(0, _QUOTIENT_BITS, _normalise, (numerator, scale, d))
    m, rem, _ = ops.fori_loop(0, _QUOTIENT_BITS, _divide, (ops.zeros_like(n), n, d))
    up = ops.logical_or(rem > d, ops.logical_and(rem == d, m % 2 == 1))
    m = m + ops.cast(up, "int32")
    return ops.cast(m, "float32") * scale * 2.0 ** (1 - _QUOTIENT_BITS)


def _normalise(_, state):
    """One doubling of `n` below `d` (`scale` halves): ends with n in [d, 2d)."""
    n, scale, d = state
    low = n < d
    return ops.where(low, n * 2, n), ops.where(low, scale * 0.5, scale), d


def _divide(_, state):
    """One quotient bit into `m`; `rem` is twice the remainder."""
    m, rem, d = state
    bit = rem >= d
    return m * 2 + ops.cast(bit, "int32"), (rem - ops.where(bit, d, 0)) * 2, d


def check_features(features, name="features"):
    features = ops.convert_to_tensor(features)
    if rank(features) != 4:
        raise invalid(
            name, "a 4-D NHWC tensor (batch, height, width, channels)",
            f"<tensor of shape {features.shape}>",
        )
    if not keras.backend.standardize_dtype(features.dtype).startswith(("float", "bfloat")):
        raise invalid(
            name, "a floating-point tensor", f"<tensor of dtype {features.dtype}>"
        )
    return features


def _check_targets(targets, features):
    targets = ops.convert_to_tensor(targets)
    if rank(targets) != 2:
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
    return ops.cast(targets, "float32")


def _check_lam(lam):
    """A Python-number `lam` must lie in [0, 1]; a tensor must be a scalar
    or `(N,)` (one value per image); its values pass unchecked."""
    if isinstance(lam, (numbers.Real, bool)):
        check_prob("lam", lam, allow_zero=True)
        return lam
    if rank(lam) not in (0, 1):
        raise invalid("lam", "a scalar or a (N,) tensor (one value per image)",
                      f"<tensor of rank {rank(lam)}>")
    return lam


def _per_image(value, ndim):
    """`value` as is if it is a scalar, else `(N,)` reshaped to broadcast
    against a rank-`ndim` tensor `(N, ...)`."""
    if rank(value) == 0:
        return value
    return ops.reshape(value, (-1,) + (1,) * (ndim - 1))


def _upstream(args, upstream):
    """The upstream gradient as `ops.custom_gradient` hands it on each backend."""
    return args[0] if upstream is None else upstream


@ops.custom_gradient
def _rows(x, perm, inverse):
    def grad(*args, upstream=None):
        return ops.take(_upstream(args, upstream), inverse, axis=0), None, None

    return ops.take(x, perm, axis=0), grad


def _gather(x, perm):
    """`x[perm]` along the batch. `perm` is a permutation, so the gradient is
    the upstream gathered by the inverse permutation: the values of the
    backends' scatter-add gather gradient, at a gather's cost."""
    perm = ops.convert_to_tensor(perm)
    return _rows(x, perm, ops.argsort(perm))


def _fill_op(soft):
    @ops.custom_gradient
    def fill(x, holes, perm, inverse, weight, keep, pasted):
        partner = ops.take(x, perm, axis=0)
        patch = weight * x + (1 - weight) * partner if soft else partner

        def grad(*args, upstream=None):
            g = _upstream(args, upstream)
            dx = g * keep + ops.take(g * pasted, inverse, axis=0)
            return dx, None, None, None, None, None, None

        return ops.where(holes, patch, x), grad

    return fill


_FILL = {False: _fill_op(False), True: _fill_op(True)}


def _fill(features, holes, perm, lam=None):
    """`where(holes, patch, x)`, `patch = x[perm]` (`lam` None) or
    `lam x + (1 - lam) x[perm]`; `holes` bool, broadcasting against `x`.

    `perm` is a permutation, so the gradient is computed in one pass a term,
    `dx = g c_x + (g c_p)[perm^-1]` with `c_x = where(holes, lam, 1)` and
    `c_p = where(holes, 1 - lam, 0)` (`lam` 0 for a pasted patch): the values
    the backends' where, take and scatter-add gradients give, at a fraction
    of their passes over the feature map.
    """
    dtype = features.dtype
    one, zero = ops.ones((), dtype), ops.zeros((), dtype)
    weight = zero if lam is None else ops.cast(lam, dtype)
    keep = ops.where(holes, weight, one)
    pasted = ops.where(holes, one - weight, zero)
    perm = ops.convert_to_tensor(perm)
    return _FILL[lam is not None](features, holes, perm, ops.argsort(perm), weight, keep, pasted)


def beta(alpha, seed, shape=()):
    """Draws `Beta(alpha, alpha)` as `g1 / (g1 + g2)`, `g_i ~ Gamma(alpha, 1)`.

    `alpha <= 0` means no mixing: every draw is 1.0 (the reference's
    `get_lambda`). Returns float32.
    """
    alpha = check_alpha(alpha)
    shape = tuple(shape)
    if alpha <= 0:
        return ops.ones(shape, "float32")
    s1, s2 = split_seed(seed, 2)
    g1 = draws.gamma(shape, s1, alpha)
    g2 = draws.gamma(shape, s2, alpha)
    # g1 + g2 > 0 almost surely; the guard keeps tiny alphas finite.
    return ops.divide_no_nan(g1, g1 + g2)


def permutation(n, seed, groups=1):
    """A uniformly random permutation of `0..n-1` (int32), from `seed`: the
    stable argsort of `n` uniform keys.

    With `groups > 1` (dividing `n`) it permutes within each of `groups`
    consecutive equal blocks only (block `g`: the argsort of its own keys,
    offset by its start), so no index leaves its block; `groups=1` is the
    plain permutation of the same keys.
    """
    keys = uniform([n], seed)
    if groups == 1:
        return draws.argsort(keys)
    if n % groups:
        raise ValueError(f"Cannot split a batch of {n} into {groups} equal groups; give a "
                         f"batch size that is a multiple of {groups}.")
    size = n // groups
    within = draws.argsort(ops.reshape(keys, (groups, size)))
    starts = ops.reshape(ops.arange(0, n, size, dtype="int32"), (groups, 1))
    return ops.reshape(within + starts, (n,))


def _mix_targets(targets, perm, lam):
    y_b = _gather(targets, perm)
    lam = _per_image(lam, 2)
    return targets, y_b, lam * targets + (1.0 - lam) * y_b


def mixup(features, targets, *, lam, perm):
    """Mixup: `x' = lam x + (1-lam) x[perm]`, `y_mix = lam y + (1-lam) y[perm]`.

    `u = lam`; `y_a = y`, `y_b = y[perm]`. A `(N,)` `lam` mixes image `i`
    with `lam[i]`.
    """
    features = check_features(features)
    targets = _check_targets(targets, features)
    lam = ops.cast(_check_lam(lam), "float32")
    lam_x = _per_image(ops.cast(lam, features.dtype), 4)
    mixed = lam_x * features + (1 - lam_x) * _gather(features, perm)
    y_a, y_b, y_mix = _mix_targets(targets, perm, lam)
    return MixResult(mixed, y_a, y_b, y_mix, lam)


def cutmix_box(height, width, lam, seed):
    """The CutMix box `(y1, y2, x1, x2)` (int32, half-open) for `lam`.

    `cut = floor(side * sqrt(1 - lam))`, centre uniform over the pixels,
    `[c - cut//2, c + cut//2)` clipped to the image. A `(N,)` `lam` gives
    `(N,)` coordinates: one box per image, each with its own centre.
    """
    # float64, as the reference's NumPy: in float32 `side * ratio` can fall
    # just below an integer that float64 reaches, and the cut loses a pixel
    # (on JAX without float64, about once in a million draws).
    wide = backend.current().wide_float()
    ratio = ops.sqrt(1.0 - ops.cast(ops.cast(lam, "float32"), wide))
    cut_h = ops.cast(ops.floor(ops.cast(height, wide) * ratio), "int32")
    cut_w = ops.cast(ops.floor(ops.cast(width, wide) * ratio), "int32")
    s_y, s_x = split_seed(seed, 2)
    shape = () if rank(ratio) == 0 else ops.shape(ratio)
    cy = draws.randint(shape, s_y, 0, height)
    cx = draws.randint(shape, s_x, 0, width)
    y1 = ops.clip(cy - cut_h // 2, 0, height)
    y2 = ops.clip(cy + cut_h // 2, 0, height)
    x1 = ops.clip(cx - cut_w // 2, 0, width)
    x2 = ops.clip(cx + cut_w // 2, 0, width)
    return y1, y2, x1, x2


def _box_mask(height, width, y1, y2, x1, x2):
    """Boolean mask, shape `(..., H, W)`, true inside rows [y1, y2), cols [x1, x2)."""
    rows = ops.arange(height, dtype="int32")
    cols = ops.arange(width, dtype="int32")
    in_rows = ops.logical_and(rows >= y1[..., None], rows < y2[..., None])
    in_cols = ops.logical_and(cols >= x1[..., None], cols < x2[..., None])
    return ops.logical_and(in_rows[..., :, None], in_cols[..., None, :])


def _spatial(images):
    """`(height, width)`: Python ints where static, else scalar tensors."""
    shape = ops.shape(images)
    return shape[1], shape[2]


def cutmix(images, targets, *, lam, perm, seed):
    """CutMix: ONE box for the batch pasted from `x[perm]` (one box per
    image for a `(N,)` `lam`).

    The box comes from `lam` (`cutmix_box`); then `u` is reset to the exact
    kept fraction `1 - box_area / (H W)`, `y_mix = u y + (1-u) y[perm]`.
    """
    images = check_features(images, "images")
    targets = _check_targets(targets, images)
    _check_lam(lam)
    box = cutmix_box(*_spatial(images), lam, seed)
    return paste_box(images, targets, perm=perm, box=box)


def paste_box(images, targets, *, perm, box):
    """Pastes `box = (y1, y2, x1, x2)` (half-open rows and columns; scalars
    for one box, `(N,)` for one per image) of `x[perm]` into `x`.

    `u = 1 - box_area / (H W)` (scalar or `(N,)`), `y_a = y`,
    `y_b = y[perm]`, `y_mix = u y + (1-u) y[perm]`.
    """
    images = check_features(images, "images")
    targets = _check_targets(targets, images)
    height, width = _spatial(images)
    y1, y2, x1, x2 = (ops.cast(c, "int32") for c in box)
    mask = _box_mask(height, width, y1, y2, x1, x2)
    mask = mask[None, :, :, None] if rank(mask) == 2 else mask[..., None]
    mixed = _fill(images, mask, perm)
    _, u = shares((y2 - y1) * (x2 - x1), height * width)
    y_a, y_b, y_mix = _mix_targets(targets, perm, u)
    return MixResult(mixed, y_a, y_b, y_mix, u)


def mixup_cutmix(images, targets, *, lam, perm, use_cutmix, seed):
    """CutMix where `use_cutmix`, else Mixup, with the same `lam` and `perm`.

    `use_cutmix` a scalar bool: one op for the batch (`keras.ops.cond`);
    `(N,)`: image `i` is `cutmix(...)[i]` if `use_cutmix[i]`, else
    `mixup(...)[i]` (both ops run; `lam`, then, is usually `(N,)` too).
    `y_a = y`, `y_b = y[perm]`; `u` and `y_mix` are those of the op taken.
    """
    images = check_features(images, "images")
    targets = _check_targets(targets, images)
    use = ops.convert_to_tensor(use_cutmix)
    if keras.backend.standardize_dtype(use.dtype) != "bool" or rank(use) not in (0, 1):
        raise invalid("use_cutmix", "a bool scalar or a (N,) bool tensor",
                      f"<tensor of dtype {use.dtype} and shape {use.shape}>")

    def by_cutmix():
        return cutmix(images, targets, lam=lam, perm=perm, seed=seed)

    def by_mixup():
        return mixup(images, targets, lam=lam, perm=perm)

    if rank(use) == 0:
        return ops.cond(use, by_cutmix, by_mixup)
    cut, mix = by_cutmix(), by_mixup()
    u_cut = ops.broadcast_to(cut.u, ops.shape(use))
    u_mix = ops.broadcast_to(mix.u, ops.shape(use))
    return MixResult(
        ops.where(_per_image(use, 4), cut.features, mix.features), cut.y_a, cut.y_b,
        ops.where(_per_image(use, 2), cut.y_mix, mix.y_mix), ops.where(use, u_cut, u_mix),
    )


def cutout_mask(batch_size, height, width, size, seed):
    """Keep-mask `(N, H, W)` (bool) with one `size`-square hole per image.

    Per image a centre `(cy, cx)` is drawn uniformly over the pixels; rows
    `[floor(cy - size/2), floor(cy + size/2))` and the same for columns are
    dropped, clipped at the borders (the reference's integer rounding).
    """
    s_y, s_x = split_seed(seed, 2)
    cy = draws.randint([batch_size], s_y, 0, height)
    cx = draws.randint([batch_size], s_x, 0, width)
    half = size / 2.0

    def bounds(centre, limit):
        centre = ops.cast(centre, "float32")
        lo = ops.cast(ops.floor(centre - half), "int32")
        hi = ops.cast(ops.floor(centre + half), "int32")
        return ops.clip(lo, 0, limit), ops.clip(hi, 0, limit)

    y1, y2 = bounds(cy, height)
    x1, x2 = bounds(cx, width)
    return ops.logical_not(_box_mask(height, width, y1, y2, x1, x2))


def cutout(images, *, size, seed):
    """Cutout: multiplies one `size`-square hole per image by 0 (own position each)."""
    images = check_features(images, "images")
    size = check_hole_size("size", size)
    shape = ops.shape(images)
    keep = cutout_mask(shape[0], shape[1], shape[2], size, seed)
    return images * ops.cast(keep, images.dtype)[..., None]


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
    seeds = ops.cast(uniform(shape, seed) < np.float32(rate), "float32")
    return ops.max_pool(seeds, block_size, strides=1, padding="same")


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
    mask = 1.0 - block_holes(ops.shape(features), rate, block_size, seed)
    if per_sample:
        size = float(height * width * features.shape[3])
        scale = size / ops.maximum(ops.sum(mask, axis=(1, 2, 3), keepdims=True), 1.0)
        return features * ops.cast(mask * scale, features.dtype)
    scale = ops.cast(ops.size(mask), "float32") / ops.maximum(ops.sum(mask), 1.0)
    return features * ops.cast(mask * scale, features.dtype)


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
    batch_size = ops.shape(features)[0] if per_sample else None
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
    holes = ops.cast(ops.convert_to_tensor(holes), "float32")
    axis = (1, 2, 3) if rank(holes) == 4 else None
    q, u = shares(ops.sum(holes, axis=axis), height * width * channels)
    y_shuffled = _gather(targets, perm)
    if mode == "hard":
        mixed = _fill(features, ops.cast(holes, "bool"), perm)
        y_b = y_shuffled
    else:
        lam = ops.cast(lam, "float32")
        lam_x = _per_image(ops.cast(lam, features.dtype), 4)
        mixed = _fill(features, ops.cast(holes, "bool"), perm, lam_x)
        lam_y = _per_image(lam, 2)
        y_b = lam_y * targets + (1.0 - lam_y) * y_shuffled
    y_mix = _per_image(u, 2) * targets + _per_image(q, 2) * y_b
    return MixResult(mixed, targets, y_b, y_mix, u, holes)
