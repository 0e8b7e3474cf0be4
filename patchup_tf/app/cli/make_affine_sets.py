"""Make the eight deformed test sets (the reference's `load_data.py --affine_path`).

    patchup-make_affine_sets.py --affine_path ./data/test/affine/ \
        --data_dir ./data/cifar100/ [--seed 0]
    patchup-make_affine_sets.py --dataset folder --data_dir DIR --affine_path OUT \
        [--image_size N]

Reads the official CIFAR-100 test set (torchvision's files or prepared TFDS
data in --data_dir), or the test/ split of an image folder (each image
resized to --image_size squares if given, as the trainer's run used), and
writes DIR/<name>.npz for rotation_20, rotation_40,
shear_28.6, shear_57.3, zoom_0.6, zoom_0.8, zoom_1.2 and zoom_1.4: uint8
images, int64 labels, the class names and a JSON description of the
transform (see patchup_tf.app.evaluation.affine). Evaluate a model on them with
`scripts/evaluate.py MODEL --affine_path DIR` or train with
`scripts/train.py ... --affine_test --affine_path DIR`.

Exit codes: 0 done; 2 bad input (one message on stderr, nothing written).
"""

import argparse
import os
import time

from patchup_tf.app.cli import fail, program
from patchup_tf.app.experiment.config import str2bool
from patchup_tf.app.constants import AFFINE_DATASETS, FOLDER


def build_parser():
    p = argparse.ArgumentParser(
        prog="make_affine_sets.py",
        description="Write the eight deformed test sets of CIFAR-100 or an image folder.",
    )
    p.add_argument("--affine_path", required=True, help="output folder")
    p.add_argument("--data_dir", default=None,
                   help="CIFAR-100: torchvision's files or prepared TFDS data "
                   "(default ./data/cifar100)")
    p.add_argument("--dataset", default="cifar100", choices=AFFINE_DATASETS,
                   help="cifar100 (the paper's), or folder: DIR/test/<class>/<images>")
    p.add_argument("--image_size", type=int, default=None,
                   help="folder: resize every test image to this square (as in training)")
    p.add_argument("--skip_bad_images", type=str2bool, nargs="?", const=True, default=False,
                   help="folder: leave unreadable test files out")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the per-image draws (each set its own stream)")
    return p


def _describe(spec):
    unit = "" if spec.kind == "zoom" else " deg"
    if spec.range is not None:
        return f"{spec.kind} U[{spec.range[0]:g}, {spec.range[1]:g}]{unit}"
    return f"{spec.kind} {spec.value:g}"


@program
def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.seed < 0:
        fail(f"--seed must be >= 0, got {args.seed}")
    if os.path.exists(args.affine_path) and not os.path.isdir(args.affine_path):
        fail(f"--affine_path {args.affine_path} exists and is not a folder")

    if args.dataset == FOLDER and args.data_dir is None:
        fail("--dataset folder needs --data_dir DIR (its test/<class>/ images are deformed)")
    if args.image_size is not None and (args.dataset != FOLDER or args.image_size < 1):
        fail(f"--image_size {args.image_size}: only for --dataset folder, an int >= 1")
    from patchup_tf.app.cli.tf_logging import import_tensorflow

    import_tensorflow()
    from patchup_tf.app.data import DataError, load_test_split
    from patchup_tf.app.evaluation.affine import AFFINE_SETS, make_all_affine_sets

    try:
        raw = load_test_split(args.dataset, args.data_dir, image_size=args.image_size,
                              skip_bad_images=args.skip_bad_images)
    except DataError as e:
        fail(str(e))
    start = time.time()
    paths = make_all_affine_sets(raw.x_test, raw.y_test, list(raw.class_names),
                                 args.affine_path, args.seed)
    n = raw.x_test.shape[0]
    for name, path in zip(AFFINE_SETS, paths):
        print(f"{name:<12} {_describe(AFFINE_SETS[name]):<32} {n} images -> {path}")
    print(f"wrote {len(paths)} sets in {time.time() - start:.1f}s (seed {args.seed})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
