"""NumPy references of the documented formulas, shared by the exactness tests.

Nothing here calls the library or a backend: each expected value is written
out from `docs/methods.md` in NumPy/SciPy.
"""

import numpy as np
from scipy import ndimage

RNG = np.random.RandomState(1234)


def np_gamma_adj(gamma, b, h, w):
    return gamma * h * w / (b * b * (h - b + 1) * (w - b + 1))


def grow_blocks(seeds, b):
    """Each nonzero seed of `(N, H, W, C)` grown into the clipped b x b square around it."""
    return ndimage.maximum_filter(seeds, size=(1, b, b, 1), mode="constant", cval=0.0)


def holes_from_uniforms(uniforms, rate, b):
    """Bernoulli(rate) seeds (`uniforms < rate` in float32) grown into b x b blocks."""
    return grow_blocks((np.asarray(uniforms) < np.float32(rate)).astype(np.float32), b)


def is_union_of_blocks(holes2d, b):
    """True iff the binary map is a union of (border-clipped) b x b squares.

    Morphological opening with a b x b square: erosion treating the outside as
    holes (a clipped block is a square partly outside the map), then dilation
    with nothing outside. Unions of such squares are exactly its fixed points.
    """
    holes2d = holes2d.astype(bool)
    st = np.ones((b, b), bool)
    eroded = ndimage.binary_erosion(holes2d, st, border_value=1)
    opened = ndimage.binary_dilation(eroded, st, border_value=0)
    return np.array_equal(opened, holes2d)


def distinct_batch(n, h, w, c, dtype=np.float32):
    """Features whose every entry is distinct (so any change is visible)."""
    x = RNG.permutation(n * h * w * c).reshape(n, h, w, c).astype(np.float64)
    return (x / (n * h * w * c) + 0.5).astype(dtype)


def one_hot(labels, k):
    return np.eye(k, dtype=np.float32)[labels]


def derangement(n):
    return np.roll(np.arange(n), 1).astype(np.int32)


def np_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def np_bce_on_softmax(logits, targets):
    """torch.nn.BCELoss(softmax(logits), targets) as the float32 reference runs it.

    The probabilities are float32 (softmax in float64, rounded once), `1 - p`
    is their float32 difference (so a confident p rounds to 1 and its
    log(1 - p) hits the clamp), the logs and the mean are float64, each log
    clamped at -100.
    """
    p = np_softmax(np.asarray(logits, np.float64)).astype(np.float32)
    one_minus_p = (np.float32(1) - p).astype(np.float64)
    t = np.asarray(targets, np.float64)
    with np.errstate(divide="ignore"):
        log_p = np.maximum(np.log(p.astype(np.float64)), -100.0)
        log_1mp = np.maximum(np.log(one_minus_p), -100.0)
    return float(np.mean(-(t * log_p + (1 - t) * log_1mp)))


def np_softmax_ce(logits, targets):
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return float(np.mean(-(np.asarray(targets, np.float64) * log_p).sum(-1)))


def np_cutmix_box(h, w, lam, cy, cx):
    """the documented box: cut = floor(side sqrt(1-lam)), [c - cut//2, c + cut//2) clipped."""
    ratio = np.sqrt(1.0 - np.float64(np.float32(lam)))
    cut_h, cut_w = int(np.floor(h * ratio)), int(np.floor(w * ratio))
    return (
        int(np.clip(cy - cut_h // 2, 0, h)), int(np.clip(cy + cut_h // 2, 0, h)),
        int(np.clip(cx - cut_w // 2, 0, w)), int(np.clip(cx + cut_w // 2, 0, w)),
    )


def np_cutout_bounds(c, size, limit):
    """The reference's Cutout: int(clip(c -/+ size/2, 0, limit))."""
    return int(np.clip(c - size / 2, 0, limit)), int(np.clip(c + size / 2, 0, limit))


def box_of(mask2d):
    """(y1, y2, x1, x2) of the bounding box of a boolean map, asserting it is a full box."""
    rows = np.flatnonzero(mask2d.any(axis=1))
    cols = np.flatnonzero(mask2d.any(axis=0))
    if rows.size == 0:
        return None
    y1, y2, x1, x2 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    full = np.zeros_like(mask2d, bool)
    full[y1:y2, x1:x2] = True
    assert np.array_equal(full, mask2d), "changed region is not a rectangle"
    return int(y1), int(y2), int(x1), int(x2)
