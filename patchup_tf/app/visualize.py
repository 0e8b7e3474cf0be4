"""Pictures: the paper's Figure 1, the activation study, training curves.

* `figure1_data` / `plot_figure1`: two input images `a` and `b`, the feature
  maps of a model at a mixing point, the PatchUp mask there and the hard and
  soft PatchUp results (`patchup_tf.mixing.patchup` with one seed, so both
  modes use the same mask). Feature maps and the mask have channels; they
  are shown as their channel mean (for the binary holes: the share of
  channels patched at each pixel).
* `activation_study` / `write_activation_csv` / `plot_activations`: the
  reference's `utility/activation_study.py` (paper section 4.4 and appendix
  E): the activations of a trained model at the mixing points (after the
  stem and stages 1..3: its WRN children 1, 3, 5, 7) on clean test images,
  per channel, summed over the spatial positions and averaged over the
  samples. The reference sums only the first image of every batch but
  divides by the data set's size; here every image counts.
* `replot_curves`: the training curves of an experiment folder from its
  `log.json`.
"""

import csv
import os
import textwrap

import numpy as np

from patchup_tf.app import folder as folder_lib

__all__ = [
    "ActivationResult",
    "Figure1Data",
    "activation_study",
    "feature_model",
    "figure1_data",
    "mixing_layer_names",
    "plot_activations",
    "plot_figure1",
    "replot_curves",
    "write_activation_csv",
]

CURVE_KEYS = ("epoch", "train_loss", "valid_loss", "test_loss", "train_accuracy",
              "valid_top1", "test_top1")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_png(fig, path, dpi=100):
    from patchup_tf.files import atomic_write

    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi), suffix=".png")


# ------------------------------------------------------------------ helpers
def _graph_layers(model):
    """Every layer of `model`, nested models looked into, outer ones first."""
    import keras

    layers, queue = [], list(model.layers)
    while queue:
        layer = queue.pop(0)
        layers.append(layer)
        if isinstance(layer, keras.Model):
            queue.extend(layer.layers)
    return layers


def _mixing_points(model):
    """The model's `MixingPoint` layers (nested ones too), by position."""
    from patchup_tf.layers import MixingPoint

    points = [layer for layer in _graph_layers(model) if isinstance(layer, MixingPoint)]
    return sorted(points, key=lambda layer: layer.position)


def mixing_layer_names(model):
    """The names of the model's mixing points, by position (`mix_1..mix_4`
    in the models built here and attached ones; nested models looked into)."""
    return [layer.name for layer in _mixing_points(model)]


def _named_layers(model, names):
    """The layers called `names` (the outermost of a name), or a ValueError."""
    by_name = {}
    for layer in _graph_layers(model):
        by_name.setdefault(layer.name, layer)
    missing = [n for n in names if n not in by_name]
    if missing:
        points = mixing_layer_names(model)
        raise ValueError(
            f"the model has no layer {', '.join(missing)} (its mixing points: "
            f"{', '.join(points) if points else 'none'})"
        )
    return [by_name[n] for n in names]


def feature_model(model, layer_names):
    """A functional sub-model from `model`'s inputs to the named layers' outputs.

    Args:
        model: a functional Keras model (e.g. a `MixingModel`); layers of
            nested models (an attached backbone's) may be named too.
        layer_names: a name or a list of names (e.g. `"mix_2"`).

    Returns:
        A `keras.Model` with one output per name (a single output for a str).
    """
    import keras

    from patchup_tf.attachment import layer_outputs

    single = isinstance(layer_names, str)
    layers = _named_layers(model, [layer_names] if single else list(layer_names))
    top = {id(layer) for layer in model.layers}
    if all(id(layer) in top for layer in layers):
        outputs = [layer.output for layer in layers]
    else:  # inside a nested model: its graph, as tensors of the model's inputs
        outputs = layer_outputs(model, layers)
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, outputs[0] if single else outputs,
                       name=f"{model.name}_features")


# ------------------------------------------------------------------ figure 1
class Figure1Data(dict):
    """What `plot_figure1` draws (a dict with attribute access).

    Keys: `images` uint8 (2, H, W, 3); `labels` (2,); `features` float32
    (2, h, w, c) at the mixing point; `holes` float32 (h, w, c), binary;
    `hard`, `soft` float32 (h, w, c): image a's features after hard / soft
    PatchUp with b; `position`, `layer`, `gamma`, `block_size`, `lam`, `q`
    (the patched share), `seed`, `class_names` (2 names or None).
    """

    __getattr__ = dict.__getitem__


def figure1_data(model, images_uint8, labels, mean, std, *, position=2, gamma=0.5,
                 block_size=7, lam=None, alpha=2.0, seed=0, class_names=None):
    """Runs PatchUp (hard and soft, same mask) on the features of two images.

    Args:
        model: a functional Keras model with a `MixingPoint` at `position`
            (`mix_{position}` in built and attached models).
        images_uint8: uint8 `(2, H, W, C)`: images a and b.
        labels: their two integer labels.
        mean, std: normalisation statistics (0-255 units).
        position: mixing point 1..4.
        gamma: PatchUp's gamma.
        block_size: the PatchUp block on 32-wide maps; the block used is
            `patchup_block_size(width, block_size)` for the map's width.
        lam: soft PatchUp's interpolation weight; None draws it from
            `Beta(alpha, alpha)` with `seed`.
        alpha: see `lam`.
        seed: int seed of the mask (and of `lam`).
        class_names: optional names of the two labels.

    Returns:
        A `Figure1Data`.
    """
    import tensorflow as tf

    from patchup_tf import mixing, rules
    from patchup_tf.app.data import normalize

    images = np.asarray(images_uint8)
    if images.ndim != 4 or images.shape[0] != 2:
        raise ValueError(f"expected two images (2, H, W, C), got shape {images.shape}")
    layer = _point_at(model, position).name
    sub = feature_model(model, layer)
    x = normalize(images, mean, std)
    features = tf.cast(sub(tf.constant(x), training=False), tf.float32)
    if features.shape.rank != 4:
        raise ValueError(f"layer {layer} outputs shape {features.shape}, not a feature map")
    width = int(features.shape[2])
    block = rules.patchup_block_size(width, block_size)
    mask_seed, lam_seed = mixing.split_seed(seed, 2)
    lam = float(mixing.beta(float(alpha), lam_seed) if lam is None else lam)
    labels = np.asarray(labels, np.int64).reshape(2)
    num_classes = int(max(labels.max() + 1, 2))
    targets = tf.one_hot(labels, num_classes)
    perm = tf.constant([1, 0], tf.int32)
    out = {}
    for mode in ("hard", "soft"):
        result = mixing.patchup(features, targets, mode=mode, gamma=float(gamma),
                                block_size=block, lam=lam, perm=perm, seed=mask_seed)
        out[mode] = result.features[0].numpy()
        out[mode + "_holes"] = result.holes.numpy()
    if not np.array_equal(out["hard_holes"], out["soft_holes"]):  # same seed, same mask
        raise AssertionError("hard and soft PatchUp drew different masks")
    holes = out["hard_holes"]
    return Figure1Data(
        images=images, labels=labels, features=features.numpy(), holes=holes,
        hard=out["hard"], soft=out["soft"], position=position, layer=layer,
        gamma=float(gamma), block_size=block, lam=lam, q=float(holes.mean()), seed=seed,
        class_names=None if class_names is None else [str(c) for c in class_names],
    )


def _point_at(model, position):
    """The model's mixing point at `position`, whatever its name (files saved
    before `rules.mixing_point_name` may call an attached one
    `mixing_point_{position}`)."""
    from patchup_tf.rules import mixing_point_name

    if not isinstance(position, int) or isinstance(position, bool) or not 1 <= position <= 4:
        raise ValueError(f"position must be 1..4 (PatchUp's feature-level positions), "
                         f"got {position!r}")
    points = [p for p in _mixing_points(model) if p.position == position]
    if not points:
        named = mixing_layer_names(model)
        raise ValueError(
            f"the model has no layer {mixing_point_name(position)} (no mixing point at "
            f"position {position}; its mixing points: {', '.join(named) or 'none'})"
        )
    return points[0]


def plot_figure1(data, path, title=None):
    """Draws Figure 1 from `figure1_data`'s result into the PNG `path`.

    Top row: image a, image b, the mask (channel mean of the binary holes)
    and its channel 0 (binary). Bottom row: the features of a and of b, hard
    and soft PatchUp of a with b (all as channel means, one colour scale for
    the four feature panels). The parameters go in a footnote.
    """
    plt = _pyplot()
    mean_a = data.features[0].mean(-1)
    mean_b = data.features[1].mean(-1)
    hard = data.hard.mean(-1)
    soft = data.soft.mean(-1)
    mask = data.holes.mean(-1)
    lo = float(min(m.min() for m in (mean_a, mean_b, hard, soft)))
    hi = float(max(m.max() for m in (mean_a, mean_b, hard, soft)))
    if hi <= lo:
        hi = lo + 1e-6
    fig, axes = plt.subplots(2, 4, figsize=(12, 6.6))
    panels = _figure1_panels(data, axes, mask, mean_a, mean_b, hard, soft)
    im = _draw_panels(panels, lo, hi)
    fig.colorbar(im, ax=list(axes[1, :]), fraction=0.015, pad=0.02, label="channel mean")
    _figure1_footnote(fig, data)
    title = title or "PatchUp on the feature maps (channel means)"
    fig.suptitle(textwrap.fill(title, 110), fontsize=11 if len(title) <= 110 else 9)
    _save_png(fig, path)
    plt.close(fig)
    return path


def _figure1_label(data, i):
    """Image `i`'s class as a panel title names it: its name and label, or
    `class <label>` without class names."""
    label = int(data.labels[i])
    if data.class_names:
        return f"{data.class_names[i]} ({label})"
    return f"class {label}"


def _figure1_panels(data, axes, mask, mean_a, mean_b, hard, soft):
    """Figure 1's eight panels: `(axes, image, title, colour map)`, where the
    map None is an input image and `"mask"` a mask."""
    return [
        (axes[0, 0], data.images[0], f"(a) input a: {_figure1_label(data, 0)}", None),
        (axes[0, 1], data.images[1], f"(b) input b: {_figure1_label(data, 1)}", None),
        (axes[0, 2], mask, f"PatchUp mask M at {data.layer}\n(channel mean of the holes)", "mask"),
        (axes[0, 3], data.holes[..., 0], "M, channel 0\n(binary: 1 = patched)", "mask"),
        (axes[1, 0], mean_a, f"features of a at {data.layer}", "viridis"),
        (axes[1, 1], mean_b, f"features of b at {data.layer}", "viridis"),
        (axes[1, 2], hard, "hard PatchUp: (1-M) a + M b", "viridis"),
        (axes[1, 3], soft, "soft PatchUp: (1-M) a + M mix(a, b)", "viridis"),
    ]


def _draw_panels(panels, lo, hi):
    """Draws each panel, feature maps on the shared scale `[lo, hi]`; returns
    the last feature map's image (for the colour bar), None without one."""
    im = None
    for ax, img, text, cmap in panels:
        if cmap is None:
            rgb = img.shape[-1] == 3
            ax.imshow(img if rgb else img[..., 0], cmap=None if rgb else "gray",
                      interpolation="nearest")
        elif cmap == "mask":
            ax.imshow(img, cmap="gray_r", vmin=0.0, vmax=1.0, interpolation="nearest")
        else:
            im = ax.imshow(img, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_title(text, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    return im


def _figure1_footnote(fig, data):
    """Writes Figure 1's parameters as a footnote under its panels."""
    h, w, c = data.holes.shape
    fig.text(
        0.5, 0.015,
        f"feature map {h}x{w}x{c}, gamma {data.gamma:g}, block {data.block_size}, "
        f"patched share q = {data.q:.3f}, soft mix(a, b) = lam a + (1-lam) b with "
        f"lam = {data.lam:.3f}, seed {data.seed}; feature panels share one colour scale, "
        "mask panels: black = patched",
        ha="center", fontsize=8,
    )

# --------------------------------------------------------- activation study
class ActivationResult(dict):
    """One mixing point's activations (a dict with attribute access).

    Keys: `position` (1..4), `layer`, `shape` (h, w, c), `num_images`,
    `channel_sum` float64 (c,): per channel the activation summed over the
    spatial positions, averaged over the images (the reference's quantity);
    `channel_mean` (c,) = `channel_sum / (h w)`; `channel_abs_mean` (c,):
    the mean absolute activation.
    """

    __getattr__ = dict.__getitem__


def activation_study(model, dataset, layer_names=None):
    """Mean activations at the mixing points of `model` over `dataset`.

    Args:
        model: a functional Keras model with `MixingPoint` layers.
        dataset: iterable of `(images, labels)` batches (normalised images)
            or of images.
        layer_names: the layers to study; default all mixing points.

    Returns:
        A list of `ActivationResult`, one per layer.
    """
    names = list(layer_names) if layer_names is not None else mixing_layer_names(model)
    if not names:
        raise ValueError("the model has no mixing points (layers mix_1..mix_4)")
    sub = feature_model(model, names)
    layers = _named_layers(model, names)
    totals = _activation_sums(sub, dataset, len(names))
    out = []
    for i, name in enumerate(names):
        s, a, pixels, count, shape = totals[i]
        position = getattr(layers[i], "position", i + 1)
        out.append(ActivationResult(
            position=int(position), layer=name, shape=shape, num_images=count,
            channel_sum=s / count, channel_mean=s / pixels, channel_abs_mean=a / pixels,
        ))
    return out


def _activation_sums(sub, dataset, n):
    """Per output of `sub` over `dataset`: `(channel sums, channel sums of
    |x|, pixels, images, (h, w, c) of the first batch)`; the sizes are read
    off the features (a model of unknown input size has no static ones)."""
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def sums(images):
        outs = sub(images, training=False)
        if not isinstance(outs, (list, tuple)):
            outs = [outs]
        result = []
        for f in outs:
            f = tf.cast(f, tf.float64)
            result.append((tf.reduce_sum(f, axis=[0, 1, 2]),
                           tf.reduce_sum(tf.abs(f), axis=[0, 1, 2]), tf.shape(f)))
        return result

    totals = [None] * n
    for batch in dataset:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        for i, (s, a, shape) in enumerate(sums(images)):
            s, a, (b, h, w, c) = s.numpy(), a.numpy(), (int(d) for d in shape)
            if totals[i] is None:
                totals[i] = (s, a, b * h * w, b, (h, w, c))
            else:
                t = totals[i]
                totals[i] = (t[0] + s, t[1] + a, t[2] + b * h * w, t[3] + b, t[4])
    if totals[0] is None:
        raise ValueError("the data set is empty")
    return totals


ACTIVATION_FIELDS = ("model", "position", "layer", "height", "width", "channels", "channel",
                     "mean_channel_sum", "mean_activation", "mean_abs_activation",
                     "num_images")


def write_activation_csv(studies, path):
    """One CSV row per (model, mixing point, channel).

    Args:
        studies: dict `model label -> activation_study result`.
        path: the CSV file.
    """
    from patchup_tf.files import atomic_write

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=ACTIVATION_FIELDS)
            writer.writeheader()
            for label, results in studies.items():
                for r in results:
                    h, w, c = r.shape
                    for ch in range(c):
                        writer.writerow({
                            "model": label, "position": r.position, "layer": r.layer,
                            "height": h, "width": w, "channels": c, "channel": ch,
                            "mean_channel_sum": f"{r.channel_sum[ch]:.8g}",
                            "mean_activation": f"{r.channel_mean[ch]:.8g}",
                            "mean_abs_activation": f"{r.channel_abs_mean[ch]:.8g}",
                            "num_images": r.num_images,
                        })

    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    atomic_write(path, write, suffix=".csv")
    return path


def plot_activations(studies, path, title=None):
    """One panel per mixing point: each model's per-channel mean activation,
    channels sorted from the largest to the smallest."""
    plt = _pyplot()
    layers = []
    for results in studies.values():
        for r in results:
            if r.layer not in layers:
                layers.append(r.layer)
    fig, axes = plt.subplots(1, len(layers), figsize=(4 * len(layers), 3.6), squeeze=False)
    for ax, layer in zip(axes[0], layers):
        for label, results in studies.items():
            for r in results:
                if r.layer != layer:
                    continue
                values = np.sort(r.channel_mean)[::-1]
                ax.plot(np.arange(len(values)), values,
                        label=f"{label} (mean {r.channel_mean.mean():.3g})")
                h, w, c = r.shape
                ax.set_title(f"{layer}: {h}x{w}x{c}", fontsize=10)
        ax.axhline(0.0, color="gray", lw=0.5)
        ax.set_xlabel("channel (sorted)")
        ax.set_ylabel("mean activation")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title or "Activations at the mixing points (clean test images)", fontsize=11)
    fig.tight_layout()
    _save_png(fig, path)
    plt.close(fig)
    return path


# ------------------------------------------------------------------ curves
def replot_curves(exp_dir, out_dir=None):
    """Re-draws `loss.png` and `accuracy.png` from `exp_dir/log.json`.

    Returns the two paths. Raises ValueError if the log is missing or has
    no usable rows.
    """
    from patchup_tf.app.plots import plot_curves

    path = folder_lib.log_path(exp_dir)
    if not os.path.isfile(path):
        raise ValueError(f"{exp_dir} has no {folder_lib.LOG_JSON} (not an experiment folder, "
                         "or no epoch has completed)")
    try:
        history = folder_lib.read_log(exp_dir)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {path}: {e}") from e
    if not isinstance(history, list) or not history or not all(
        isinstance(r, dict) for r in history
    ):
        raise ValueError(f"{path} holds no epochs (expected a list of per-epoch rows)")
    missing = sorted({k for r in history for k in CURVE_KEYS if k not in r})
    if missing:
        raise ValueError(f"{path} rows lack {', '.join(missing)}")
    out_dir = exp_dir if out_dir is None else out_dir
    os.makedirs(out_dir, exist_ok=True)
    plot_curves(history, out_dir)
    return folder_lib.curve_paths(out_dir)
