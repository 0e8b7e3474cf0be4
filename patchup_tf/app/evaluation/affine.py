"""Deformed-image test sets (`docs/methods.md`, "Evaluation suites").

Eight sets, each made from the CIFAR-100 test images by one random affine
draw per image, reproducing the reference's torchvision 0.4.2
`RandomAffine` + Pillow `Image.transform(AFFINE, NEAREST)`:

=============  ==========================================  ====================
name           transform                                   reference transform
=============  ==========================================  ====================
rotation_20    rotation, angle ~ U[-20, 20] degrees        RandomAffine(20)
rotation_40    rotation, angle ~ U[-40, 40] degrees        RandomAffine(40)
shear_28.6     x-shear, angle ~ U[-28.6, 28.6] degrees     RandomAffine(0, shear=28.6)
shear_57.3     x-shear, angle ~ U[-57.3, 57.3] degrees     RandomAffine(0, shear=57.3)
zoom_0.6       fixed scale 0.6 (shrinks)                   RandomAffine(0, scale=(.6, .6))
zoom_0.8       fixed scale 0.8                             RandomAffine(0, scale=(.8, .8))
zoom_1.2       fixed scale 1.2 (enlarges)                  RandomAffine(0, scale=(1.2, 1.2))
zoom_1.4       fixed scale 1.4                             RandomAffine(0, scale=(1.4, 1.4))
=============  ==========================================  ====================

Convention (torchvision 0.4.2 `_get_inverse_affine_matrix`): coordinates
`(x, y)` = (column, row), y pointing down, origin at the top-left corner of
the image, pixel `(i, j)` covering `[i, i+1) x [j, j+1)`. The centre is
`(W/2 + 0.5, H/2 + 0.5)` = (16.5, 16.5) for 32x32 images -- the centre of
pixel (16, 16), half a pixel right of and below the geometric centre; kept
as in the reference. About that centre the forward map is `p' = L p` with

* rotation by `a` (clockwise on screen for `a > 0`):
  `L = [[cos a, -sin a], [sin a, cos a]]`;
* "shear" by `s` (torchvision's, not the textbook shear):
  `L = [[1, -sin s], [0, cos s]]`, i.e. `x' = x - sin(s) y`,
  `y' = cos(s) y`, which also squashes the vertical axis by `cos s`;
* zoom by `c`: `L = c I` (`c < 1` shrinks).

Each output pixel takes the input pixel under the inverse map (nearest
neighbour) or 0 outside the image, in raw uint8 pixels. Resampling uses
`tf.raw_ops.ImageProjectiveTransformV3` (float32 coordinates). Measured
against Pillow with torchvision 0.4.2's matrices it agrees bit for bit on the
zoom sets and differs on about 1.6e-4 (rotation) and 5e-5 (shear) of the
pixels, where Pillow's 16.16 fixed-point source coordinate lands on the
other side of a pixel boundary.
"""

import collections
import dataclasses
import json
import os
import zlib

import numpy as np
import tensorflow as tf

from patchup_tf.app.evaluation.metrics import evaluate_classifier
from patchup_tf.rules import check_int
from patchup_tf.files import atomic_write

__all__ = [
    "AFFINE_SETS",
    "AffineSpec",
    "affine_matrix",
    "apply_affine",
    "describe_affine_set",
    "draw_affine_params",
    "evaluate_affine_sets",
    "make_affine_set",
    "save_affine_set",
    "load_affine_set",
    "make_all_affine_sets",
]

_FORMAT = "patchup_tf.affine_set.v1"
_KINDS = ("rotation", "shear", "zoom")
_CHUNK = 2048  # images per ImageProjectiveTransformV3 call


@dataclasses.dataclass(frozen=True)
class AffineSpec:
    """One deformed set: `kind` with a uniform `range` or a fixed `value`.

    Angles (rotation, shear) are in degrees; zoom is a scale factor.
    """

    kind: str
    range: tuple = None
    value: float = None
    reference: str = ""

    def describe(self):
        """The transform part of a set's JSON description."""
        out = {"kind": self.kind, "reference": self.reference}
        if self.range is not None:
            out["range"] = [float(v) for v in self.range]
            out["distribution"] = "uniform, one draw per image"
        else:
            out["value"] = float(self.value)
        out["units"] = "scale factor" if self.kind == "zoom" else "degrees"
        return out


AFFINE_SETS = collections.OrderedDict(
    [
        ("rotation_20", AffineSpec("rotation", range=(-20.0, 20.0),
                                   reference="RandomAffine(degrees=20)")),
        ("rotation_40", AffineSpec("rotation", range=(-40.0, 40.0),
                                   reference="RandomAffine(degrees=40)")),
        ("shear_28.6", AffineSpec("shear", range=(-28.6, 28.6),
                                  reference="RandomAffine(degrees=0, shear=28.6)")),
        ("shear_57.3", AffineSpec("shear", range=(-57.3, 57.3),
                                  reference="RandomAffine(degrees=0, shear=57.3)")),
        ("zoom_0.6", AffineSpec("zoom", value=0.6,
                                reference="RandomAffine(degrees=0, scale=(0.6, 0.6))")),
        ("zoom_0.8", AffineSpec("zoom", value=0.8,
                                reference="RandomAffine(degrees=0, scale=(0.8, 0.8))")),
        ("zoom_1.2", AffineSpec("zoom", value=1.2,
                                reference="RandomAffine(degrees=0, scale=(1.2, 1.2))")),
        ("zoom_1.4", AffineSpec("zoom", value=1.4,
                                reference="RandomAffine(degrees=0, scale=(1.4, 1.4))")),
    ]
)

_CONVENTION = (
    "torchvision 0.4.2 RandomAffine/_get_inverse_affine_matrix with Pillow "
    "NEAREST resampling: (x, y) = (column, row), origin at the image's "
    "top-left corner, pixel (i, j) covers [i, i+1) x [j, j+1); centre "
    "(W/2 + 0.5, H/2 + 0.5); forward map about the centre: rotation "
    "[[cos a, -sin a], [sin a, cos a]], shear [[1, -sin s], [0, cos s]], "
    "zoom c*I; nearest neighbour, fill 0 in raw uint8 pixels"
)


def _check_kind(kind):
    if kind not in _KINDS:
        raise ValueError(
            "Invalid value received for argument `kind`. Expected one of "
            f"{_KINDS}. Received: kind={kind!r}"
        )


def _check_name(name):
    if name not in AFFINE_SETS:
        raise ValueError(
            "Invalid value received for argument `name`. Expected one of "
            f"{list(AFFINE_SETS)}. Received: name={name!r}"
        )
    return AFFINE_SETS[name]


def _centre(height, width):
    """torchvision 0.4.2's centre (x, y) in corner-origin pixel coordinates."""
    return width * 0.5 + 0.5, height * 0.5 + 0.5


def _angle_scale_shear(kind, values):
    """torchvision's (angle, scale, shear) arrays for `kind` and `values`."""
    values = np.asarray(values, dtype=np.float64)
    zeros = np.zeros_like(values)
    if kind == "rotation":
        return values, np.ones_like(values), zeros
    if kind == "shear":
        return zeros, np.ones_like(values), values
    if np.any(values <= 0):
        raise ValueError(
            "Invalid value received for argument `value`. Expected a zoom "
            f"scale > 0. Received: value={values}"
        )
    return zeros, values, zeros


def affine_matrix(kind, value, size=32):
    """Forward 3x3 matrix of one transform (a batch if `value` is an array).

    Args:
        kind: "rotation", "shear" (angles in degrees) or "zoom" (scale).
        value: the angle or scale; a scalar or an array of shape `(N,)`.
        size: image size, an int or `(height, width)`.

    Returns:
        float64 array `(3, 3)` (or `(N, 3, 3)`) mapping input pixel
        coordinates to output ones, in the module's corner-origin convention
        about the centre `(W/2 + 0.5, H/2 + 0.5)`: `[x', y', 1] = M [x, y, 1]`.
    """
    _check_kind(kind)
    height, width = (size, size) if np.isscalar(size) else size
    angle, scale, shear = _angle_scale_shear(kind, value)
    a, s = np.radians(angle), np.radians(shear)
    lin = np.stack(
        [
            np.stack([np.cos(a) * scale, -np.sin(a + s) * scale], -1),
            np.stack([np.sin(a) * scale, np.cos(a + s) * scale], -1),
        ],
        -2,
    )
    centre = np.array(_centre(height, width))
    mat = np.zeros(lin.shape[:-2] + (3, 3))
    mat[..., :2, :2] = lin
    mat[..., :2, 2] = centre - lin @ centre
    mat[..., 2, 2] = 1.0
    return mat


def _inverse_matrices(kind, values, height, width):
    """Pillow's inverse affine data `(N, 6)`, computed as torchvision 0.4.2."""
    angle, scale, shear = _angle_scale_shear(kind, values)
    cx, cy = _centre(height, width)
    angle = np.radians(angle)
    shear = np.radians(shear)
    scale = 1.0 / scale
    d = np.cos(angle + shear) * np.cos(angle) + np.sin(angle + shear) * np.sin(angle)
    m = [np.cos(angle + shear), np.sin(angle + shear), np.zeros_like(angle),
         -np.sin(angle), np.cos(angle), np.zeros_like(angle)]
    m = [scale / d * v for v in m]
    m[2] = m[2] + (m[0] * -cx + m[1] * -cy)
    m[5] = m[5] + (m[3] * -cx + m[4] * -cy)
    m[2] = m[2] + cx
    m[5] = m[5] + cy
    return np.stack(m, axis=-1)


def _tf_transforms(inverse):
    """Pillow inverse data -> ImageProjectiveTransformV3 rows, index coords.

    Pillow samples output pixel `p` at `p + 0.5` and takes the input pixel
    `floor(u)`; in index coordinates (pixel centres at integers) that is the
    pixel nearest to `u - 0.5`, which is what TF's NEAREST mode rounds.
    """
    a0, a1, a2, a3, a4, a5 = np.moveaxis(inverse, -1, 0)
    b2 = a2 + 0.5 * (a0 + a1) - 0.5
    b5 = a5 + 0.5 * (a3 + a4) - 0.5
    zeros = np.zeros_like(a0)
    return np.stack([a0, a1, b2, a3, a4, b5, zeros, zeros], -1).astype(np.float32)


def _check_images(images):
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(
            "Invalid value received for argument `images`. Expected uint8 "
            "images of shape (N, H, W, C). Received: "
            f"images.dtype={images.dtype}, images.shape={images.shape}"
        )
    return images


def apply_affine(images_uint8, kind, values):
    """Warp each image by its own transform; nearest neighbour, fill 0.

    Args:
        images_uint8: uint8 array `(N, H, W, C)`.
        kind: "rotation", "shear" or "zoom".
        values: `(N,)` angles in degrees, or scales for "zoom".

    Returns:
        uint8 array of the images' shape.
    """
    _check_kind(kind)
    images = _check_images(images_uint8)
    n, height, width = images.shape[:3]
    values = np.broadcast_to(np.asarray(values, np.float64), (n,))
    transforms = _tf_transforms(_inverse_matrices(kind, values, height, width))
    out = []
    for start in range(0, n, _CHUNK):
        out.append(
            tf.raw_ops.ImageProjectiveTransformV3(
                images=tf.constant(images[start:start + _CHUNK]),
                transforms=tf.constant(transforms[start:start + _CHUNK]),
                output_shape=tf.constant([height, width], tf.int32),
                fill_value=tf.constant(0.0, tf.float32),
                interpolation="NEAREST",
                fill_mode="CONSTANT",
            ).numpy()
        )
    if not out:
        return images.copy()
    return np.concatenate(out, axis=0)


def draw_affine_params(name, n, seed):
    """The `n` per-image parameters of set `name` (degrees or scales).

    Draws from `np.random.default_rng([seed, crc32(name)])`, so one seed
    gives independent draws for the different sets and the same draws on
    every call.
    """
    spec = _check_name(name)
    seed = check_int("seed", seed, 0)
    if spec.range is None:
        return np.full((n,), spec.value, dtype=np.float64)
    rng = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])
    low, high = spec.range
    return rng.uniform(low, high, size=n)


def make_affine_set(images_uint8, name, seed):
    """Deformed copy of `images_uint8` `(N, H, W, C)` uint8 for set `name`."""
    images = _check_images(images_uint8)
    spec = _check_name(name)
    values = draw_affine_params(name, images.shape[0], seed)
    return apply_affine(images, spec.kind, values)


def describe_affine_set(name, seed, size=(32, 32)):
    """The JSON-able description stored with set `name`."""
    spec = _check_name(name)
    height, width = size
    out = {"format": _FORMAT, "name": name}
    out.update(spec.describe())
    out.update(
        {
            "seed": check_int("seed", seed, 0),
            "rng": "numpy.random.default_rng([seed, zlib.crc32(name)]).uniform",
            "centre": list(_centre(height, width)),
            "convention": _CONVENTION,
            "interpolation": "nearest",
            "fill": 0,
            "pixels": "raw uint8; normalise (CIFAR-100 statistics) before evaluating",
        }
    )
    return out


def _bad_file(path, what):
    return ValueError(
        f"Cannot load deformed test set from '{path}': {what}. Expected an "
        ".npz written by patchup_tf.app.evaluation.save_affine_set with uint8 "
        "`images` (N, H, W, C), int64 `labels` (N,), `class_names` (K,) and "
        "a JSON `description`."
    )


def _validate(images, labels, class_names, where):
    """Common checks of a set's arrays; returns an error string or None."""
    if images.dtype != np.uint8 or images.ndim != 4:
        return (f"{where}images must be uint8 with shape (N, H, W, C), got "
                f"dtype {images.dtype} and shape {images.shape}")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        return (f"{where}labels must be integers of shape (N,), got dtype "
                f"{labels.dtype} and shape {labels.shape}")
    if labels.shape[0] != images.shape[0]:
        return (f"{where}{images.shape[0]} images but {labels.shape[0]} "
                "labels")
    if class_names.ndim != 1 or class_names.shape[0] == 0:
        return f"{where}class_names must be a non-empty list, got shape {class_names.shape}"
    if labels.size and (labels.min() < 0 or labels.max() >= class_names.shape[0]):
        return (f"{where}labels must lie in [0, {class_names.shape[0]}), got "
                f"[{labels.min()}, {labels.max()}]")
    return None


def save_affine_set(path, images, labels, class_names, description):
    """Write one set to `path` (.npz) atomically.

    The archive holds `images` (uint8), `labels` (int64), `class_names`
    (unicode) and `description` (a JSON string; pass a dict or a JSON
    object string). It is written to a temporary file in the same directory,
    fsynced and renamed over `path`, so `path` never holds a partial file.
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    class_names = np.asarray([str(c) for c in class_names])
    error = _validate(images, labels, class_names, "")
    if error:
        raise ValueError(f"Invalid arguments to save_affine_set: {error}.")
    if isinstance(description, str):
        description = json.loads(description)
    if not isinstance(description, dict):
        raise ValueError(
            "Invalid value received for argument `description`. Expected a "
            f"dict or a JSON object string. Received: {type(description).__name__}"
        )
    text = json.dumps(description, sort_keys=True)
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(
                f,
                images=images,
                labels=labels.astype(np.int64),
                class_names=class_names,
                description=np.array(text),
            )

    atomic_write(path, write, suffix=".npz")
    return path


def load_affine_set(path, name=None):
    """Read a set written by `save_affine_set`.

    Args:
        path: the .npz file.
        name: if given, the set name its description must carry.

    Returns:
        `(images, labels, class_names, description)`: uint8 `(N, H, W, C)`,
        int64 `(N,)`, a list of str and the description dict.

    Raises:
        ValueError: the file is missing, unreadable, incomplete or
            inconsistent, or holds another set than `name`.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise _bad_file(path, "the file does not exist")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as err:  # not a zip/.npy, or a pickle we refuse
        raise _bad_file(path, f"it is not a readable .npz archive ({err})") from err
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise _bad_file(path, "it holds a single array, not an .npz archive")
    with data:
        missing = [k for k in ("images", "labels", "class_names", "description")
                   if k not in data.files]
        if missing:
            raise _bad_file(path, f"it lacks the arrays {missing}")
        try:
            images = data["images"]
            labels = data["labels"]
            class_names = data["class_names"]
            text = data["description"]
        except Exception as err:  # truncated or corrupt members
            raise _bad_file(path, f"its arrays cannot be read ({err})") from err
    error = _validate(images, labels, class_names, "")
    if error:
        raise _bad_file(path, error)
    try:
        description = json.loads(str(text))
    except ValueError as err:
        raise _bad_file(path, f"its description is not JSON ({err})") from err
    if not isinstance(description, dict) or "name" not in description:
        raise _bad_file(path, "its description is not a JSON object with a `name`")
    if name is not None and description["name"] != name:
        raise _bad_file(
            path, f"it holds set {description['name']!r}, not the requested {name!r}"
        )
    return images, labels.astype(np.int64), [str(c) for c in class_names], description


def make_all_affine_sets(images, labels, class_names, out_dir, seed):
    """Make and save the eight sets as `out_dir/<name>.npz`; returns the paths.

    `images` are raw uint8 test images `(N, H, W, C)`; every set is drawn
    with the same `seed` (independent streams per set, see
    `draw_affine_params`).
    """
    images = _check_images(images)
    seed = check_int("seed", seed, 0)
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for name in AFFINE_SETS:
        deformed = make_affine_set(images, name, seed)
        description = describe_affine_set(name, seed, images.shape[1:3])
        description["num_images"] = int(images.shape[0])
        paths.append(
            save_affine_set(
                os.path.join(out_dir, name + ".npz"),
                deformed, labels, class_names, description,
            )
        )
    return paths


def evaluate_affine_sets(model, paths, mean, std, batch_size=100):
    """`evaluate_classifier` on each saved set, normalised as the test set.

    Args:
        model: callable images -> logits (called with `training=False`).
        paths: the sets' .npz files (e.g. from `make_all_affine_sets`).
        mean, std: per-channel statistics in 0-255 pixel units; the images
            are fed as `(pixels - mean) / std`.
        batch_size: evaluation batch size.

    Returns:
        list of dicts `{"name", "path", "top1", "top5", "error", "loss"}`,
        in the order of `paths`.
    """
    from patchup_tf.app.data import normalize

    normalize(np.zeros((1, 1, 1, len(std)), np.float32), mean, std)  # checks std first
    rows = []
    for path in paths:
        images, labels, _, description = load_affine_set(path)
        x = normalize(images, mean, std)
        ds = tf.data.Dataset.from_tensor_slices((x, labels)).batch(batch_size)
        row = {"name": description["name"], "path": os.fspath(path)}
        row.update(evaluate_classifier(model, ds))
        rows.append(row)
    return rows
