"""Pictures: the paper's Figure 1, training curves, the activation study.

    patchup-visualize.py figure1 [--model MODEL | --arch preactresnet18]
        [--dataset digits] [--data_dir D] [--position 2] [--gamma 0.5]
        [--block 7] [--lam L] [--seed 0] [--index_a 0] [--index_b J]
        [--out figure1.png]
    patchup-visualize.py curves EXPERIMENT_DIR [--out_dir DIR]
    patchup-visualize.py activations MODEL [MODEL ...] [--dataset D]
        [--data_dir D] [--batch_size 100] [--num_images N] [--out_dir DIR]

figure1: two test images a and b, the PatchUp mask at mixing point
`mix_{position}` (1: after the stem, 2..4: after stages 1..3) and the hard
and soft PatchUp of a with b on the feature maps there (channel means), for
a trained model (an experiment folder or a .keras file) or a fresh,
untrained `--arch` model (default preactresnet18). The feature map comes
from a sub-model of the functional graph up to `mix_{position}`; hard and
soft PatchUp use the same seed, hence the same mask.

curves: loss.png and accuracy.png of an experiment, redrawn from log.json.

activations: the reference's activation study (utility/activation_study.py):
per mixing point and channel, the activation on clean test images summed
over the spatial positions and averaged over the images (and the per-pixel
mean); written to activations.csv and plotted to activations.png, one line
per MODEL (e.g. one experiment per regulariser).

Exit codes: 0 done; 2 bad input (one message on stderr, no traceback).
"""

import argparse
import os

from patchup_tf.app import folder as folder_lib
from patchup_tf.app.cli import fail, program
from patchup_tf.app.constants import DATASETS
from patchup_tf.rules import ARCHS


def build_parser():
    p = argparse.ArgumentParser(prog="visualize.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="{figure1,curves,activations}")

    f = sub.add_parser("figure1", help="the paper's Figure 1: PatchUp on feature maps")
    f.add_argument("--model", default=None,
                   help="experiment folder or .keras file (default: a fresh --arch model)")
    f.add_argument("--arch", choices=ARCHS, default="preactresnet18",
                   help="architecture of the fresh model when no --model is given")
    f.add_argument("--dataset", choices=DATASETS, default=None,
                   help="default: the experiment's, else digits")
    f.add_argument("--data_dir", default=None)
    f.add_argument("--position", type=int, default=2,
                   help="mixing point 1..4 (1 after the stem, 2..4 after stages 1..3)")
    f.add_argument("--gamma", type=float, default=0.5, help="PatchUp gamma (hard 0.5, soft 0.75)")
    f.add_argument("--block", type=int, default=7, help="PatchUp block on 32x32 maps (7)")
    f.add_argument("--lam", type=float, default=None,
                   help="soft PatchUp's lam (default: drawn from Beta(alpha, alpha))")
    f.add_argument("--alpha", type=float, default=2.0)
    f.add_argument("--seed", type=int, default=0, help="seed of the mask, lam and fresh model")
    f.add_argument("--index_a", type=int, default=0, help="test image a")
    f.add_argument("--index_b", type=int, default=None,
                   help="test image b (default: the next one of another class)")
    f.add_argument("--out", default="figure1.png")

    c = sub.add_parser("curves", help="re-plot an experiment's training curves")
    c.add_argument("experiment", metavar="EXPERIMENT_DIR")
    c.add_argument("--out_dir", default=None, help="default: the experiment folder")

    a = sub.add_parser("activations", help="mean activations at the mixing points")
    a.add_argument("models", metavar="MODEL", nargs="+",
                   help="experiment folders or .keras files")
    a.add_argument("--dataset", choices=DATASETS, default=None,
                   help="default: the (first) experiment's")
    a.add_argument("--data_dir", default=None)
    a.add_argument("--batch_size", type=int, default=100)
    a.add_argument("--num_images", type=int, default=None,
                   help="use the first N test images (default: all)")
    a.add_argument("--labels", nargs="+", default=None, help="one legend label per MODEL")
    a.add_argument("--out_dir", default=".",
                   help="where activations.csv and activations.png go")
    return p


def _keras_model(path):
    from patchup_tf.app.evaluation.report import load_model

    loaded = load_model(path)
    if loaded.keras_model is None:
        fail(f"{path}: a SavedModel has no layers to cut at the mixing points; give the "
             f"experiment folder or its {folder_lib.BEST_MODEL}")
    return loaded


def _data(dataset, data_dir):
    from patchup_tf.app.data import MEAN_STD, load_raw

    raw = load_raw(dataset, data_dir)
    return raw, MEAN_STD[dataset]


def _label(path):
    path = os.path.normpath(path)
    base = os.path.basename(path)
    if base in (folder_lib.BEST_MODEL, folder_lib.LAST_MODEL):
        return os.path.basename(os.path.dirname(path)) or base
    return base[: -len(".keras")] if base.endswith(".keras") else base


def run_figure1(args):
    import keras
    import numpy as np

    from patchup_tf.app.data import NUM_CLASSES
    from patchup_tf.app.evaluation.report import check_model_fits
    from patchup_tf.app.visualize import figure1_data, plot_figure1

    _check_figure1_args(args)
    loaded = _keras_model(args.model) if args.model else None
    dataset = args.dataset or (loaded.dataset if loaded else None) or "digits"
    raw, (mean, std) = _data(dataset, args.data_dir or (loaded.data_dir if loaded else None))
    if loaded is not None:
        model = loaded.keras_model
        check_model_fits(loaded, dataset, raw.x_test.shape[1:], loaded.num_classes)
        source = f"model {loaded.weights}"
        short = _label(loaded.weights if loaded.kind == "keras" else loaded.path)
        short = short if len(short) <= 60 else short[:57] + "..."
        title_source = f"trained model {short}"
    else:
        # Seed before the import: initializers made at import time draw their seeds then.
        keras.utils.set_random_seed(args.seed)
        from patchup_tf.models import build

        model = build(args.arch, NUM_CLASSES[dataset], seed=args.seed,
                      input_shape=raw.x_test.shape[1:])
        source = title_source = f"fresh (untrained) {args.arch}"
    a, b = _figure1_pair(args, raw)
    idx = np.array([a, b])
    names = [raw.class_names[int(raw.y_test[i])] for i in idx]
    data = figure1_data(
        model, raw.x_test[idx], raw.y_test[idx], mean, std, position=args.position,
        gamma=args.gamma, block_size=args.block, lam=args.lam, alpha=args.alpha,
        seed=args.seed, class_names=names,
    )
    title = f"PatchUp at {data.layer} of a {title_source} on {dataset} test images {a} and {b}"
    plot_figure1(data, args.out, title=title)
    _print_figure1(data, dataset, (a, b), names, source, args.out)


def _check_figure1_args(args):
    """Fails (exit 2) on a figure1 option out of its range."""
    if not 1 <= args.position <= 4:
        fail(f"--position must be 1..4 (PatchUp acts on feature maps there), got {args.position}")
    if not 0 < args.gamma <= 1:
        fail(f"--gamma must be in (0, 1], got {args.gamma:g}")
    if args.block < 1 or args.block % 2 == 0:
        fail(f"--block must be a positive odd number, got {args.block}")
    if args.lam is not None and not 0 <= args.lam <= 1:
        fail(f"--lam must be in [0, 1], got {args.lam:g}")
    if args.seed < 0:
        fail(f"--seed must be >= 0, got {args.seed}")


def _figure1_pair(args, raw):
    """The test images a and b: `--index_a`, and `--index_b` or else the next
    image of another class (wrapping round; a + 1 when all share a's class).

    Fails (exit 2) on an index outside the test set.
    """
    n = raw.x_test.shape[0]
    a = args.index_a
    if not 0 <= a < n:
        fail(f"--index_a must be in 0..{n - 1}, got {a}")
    if args.index_b is None:
        others = [i for i in range(a + 1, n) if raw.y_test[i] != raw.y_test[a]]
        others += [i for i in range(0, a) if raw.y_test[i] != raw.y_test[a]]
        b = others[0] if others else (a + 1) % n
    else:
        b = args.index_b
        if not 0 <= b < n:
            fail(f"--index_b must be in 0..{n - 1}, got {b}")
    return a, b


def _print_figure1(data, dataset, pair, names, source, out):
    """Prints what Figure 1 shows (images, model, parameters) and where it went."""
    a, b = pair
    h, w, c = data.holes.shape
    print(f"{dataset} test images {a} ({names[0]}) and {b} ({names[1]}); {source}")
    print(f"{data.layer}: {h}x{w}x{c} features, block {data.block_size}, gamma {data.gamma:g}, "
          f"patched share {data.q:.3f}, soft lam {data.lam:.3f}, seed {data.seed}")
    print(f"wrote {out}")


def run_curves(args):
    from patchup_tf.app.visualize import replot_curves

    if not os.path.isdir(args.experiment):
        fail(f"{args.experiment} is not a folder")
    try:
        paths = replot_curves(args.experiment, args.out_dir)
    except ValueError as e:
        fail(str(e))
    for p in paths:
        print(f"wrote {p}")


def run_activations(args):
    from patchup_tf.app.data import NUM_CLASSES, normalize
    from patchup_tf.app.evaluation.report import check_model_fits
    from patchup_tf.app.visualize import activation_study, plot_activations, write_activation_csv

    if args.batch_size < 1:
        fail(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.num_images is not None and args.num_images < 1:
        fail(f"--num_images must be >= 1, got {args.num_images}")
    if args.labels is not None and len(args.labels) != len(args.models):
        fail(f"--labels gives {len(args.labels)} labels for {len(args.models)} models")
    for path in args.models:
        if not os.path.exists(path):
            fail(f"model {path} does not exist")
    models = [_keras_model(p) for p in args.models]
    dataset = args.dataset or next((m.dataset for m in models if m.dataset), None)
    if dataset is None:
        fail(f"give --dataset (no MODEL is an experiment folder with {folder_lib.FLAGS_FILE})")
    data_dir = args.data_dir or next((m.data_dir for m in models if m.data_dir), None)
    raw, (mean, std) = _data(dataset, data_dir)
    images = raw.x_test if args.num_images is None else raw.x_test[: args.num_images]
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(normalize(images, mean, std)).batch(args.batch_size)
    labels = args.labels or [_label(p) for p in args.models]
    if len(set(labels)) != len(labels):
        labels = [f"{i}:{label}" for i, label in enumerate(labels)]
    studies = {}
    for label, loaded in zip(labels, models):
        check_model_fits(loaded, dataset, raw.x_test.shape[1:], NUM_CLASSES[dataset])
        try:
            studies[label] = activation_study(loaded.keras_model, ds)
        except ValueError as e:
            fail(f"{loaded.path}: {e}")
    csv_path = os.path.join(args.out_dir, "activations.csv")
    png_path = os.path.join(args.out_dir, "activations.png")
    write_activation_csv(studies, csv_path)
    plot_activations(studies, png_path,
                     title=f"Activations at the mixing points, {dataset} test set "
                     f"({images.shape[0]} images)")
    print(f"{'model':<24}{'layer':<8}{'shape':>14}{'mean act':>12}{'mean |act|':>12}"
          f"{'mean ch. sum':>14}")
    for label, results in studies.items():
        for r in results:
            shape = "x".join(map(str, r.shape))
            print(f"{label[:23]:<24}{r.layer:<8}{shape:>14}{r.channel_mean.mean():>12.4f}"
                  f"{r.channel_abs_mean.mean():>12.4f}{r.channel_sum.mean():>14.3f}")
    print(f"wrote {csv_path}\nwrote {png_path}")


@program
def main(argv=None):
    args = build_parser().parse_args(argv)
    from patchup_tf.app.cli.tf_logging import import_tensorflow

    import_tensorflow()
    from patchup_tf.app.data import DataError
    from patchup_tf.app.evaluation.report import EvaluationError

    runner = {"figure1": run_figure1, "curves": run_curves,
              "activations": run_activations}[args.command]
    try:
        runner(args)
    except (EvaluationError, DataError) as e:
        fail(str(e))
    except ValueError as e:
        # Model/layer problems found while building the sub-model (e.g. no mix_3).
        if "has no layer" in str(e) or "mixing points" in str(e):
            fail(str(e))
        raise
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
