"""Evaluate a trained model: test metrics, deformed CIFAR-100 sets, FGSM.

    patchup-evaluate.py MODEL [--dataset cifar100] [--data_dir D]
        [--affine_path DIR] [--fsgm_attack True] [--fgsm 0 0.05 0.1 ...]
        [--batch_size 100] [--out results.json]

MODEL is an experiment folder written by scripts/train.py (its best.keras is
used and its flags.json gives the default --dataset and --data_dir), a
SavedModel folder (e.g. the experiment's saved_model/) or a .keras file.

Reported: top-1, top-5, error (%) and cross-entropy on the official test
set; with --affine_path, the same on each of the eight deformed sets made
by patchup-make-affine-sets (from CIFAR-100's or an image folder's test
split); with --fsgm_attack True (the
reference's spelling; --fgsm_attack works too) the FGSM sweep at eps 0, .05,
.1, .12, .15, .18, .2, or at the eps given with --fgsm. The FGSM clip range
is each batch's [min, max], so the paper's numbers need --batch_size 100
(the default).

Prints a table and writes the numbers as JSON to --out (default:
EXPERIMENT/evaluation.json for an experiment folder, else
<MODEL>.evaluation.json next to the model).

Exit codes: 0 done; 2 bad input (one message on stderr, no traceback).
"""

import argparse
import json
import os
import sys

from patchup_tf.app import folder as folder_lib
from patchup_tf.app.cli import fail, program
from patchup_tf.app.experiment.config import str2bool
from patchup_tf.app.constants import DATASETS, FGSM_EPS, FOLDER, check_eps_list


def build_parser():
    p = argparse.ArgumentParser(
        prog="evaluate.py",
        description="Evaluate a trained model on the test set, the deformed "
        "CIFAR-100 sets and under FGSM.",
    )
    p.add_argument("model", metavar="MODEL",
                   help="experiment folder, SavedModel folder or .keras file")
    p.add_argument("--dataset", choices=DATASETS, default=None,
                   help="default: the experiment's data set")
    p.add_argument("--data_dir", default=None,
                   help="torchvision files, prepared TFDS data or a folder of images "
                   "(default: the experiment's)")
    p.add_argument("--affine_path", default=None,
                   help="folder of the eight deformed sets (patchup-make-affine-sets)")
    p.add_argument("--affine_test", type=str2bool, nargs="?", const=True, default=False,
                   help="accepted for the reference's command lines; --affine_path is enough")
    p.add_argument("--fsgm_attack", "--fgsm_attack", dest="fsgm_attack", type=str2bool,
                   nargs="?", const=True, default=False,
                   help="run the FGSM sweep at eps " + " ".join(f"{e:g}" for e in FGSM_EPS))
    p.add_argument("--fgsm", type=float, nargs="+", default=None, metavar="EPS",
                   help="run FGSM at these eps instead (implies the sweep)")
    p.add_argument("--batch_size", type=int, default=100,
                   help="evaluation batch size; FGSM clips to each batch's range (100)")
    p.add_argument("--skip_bad_images", type=str2bool, nargs="?", const=True, default=False,
                   help="image folders: leave unreadable test files out")
    p.add_argument("--out", default=None, help="JSON file for the results")
    return p


def experiment_folder(model_path):
    """The experiment folder MODEL belongs to: itself, or the folder holding
    it (`EXP/saved_model`, `EXP/best.keras`); None if neither has flags.json."""
    path = os.path.normpath(os.path.abspath(model_path))
    for folder in (path, os.path.dirname(path)):
        if folder_lib.is_experiment(folder):
            return folder
    return None


def _experiment_record(model_path):
    """The experiment's flags.json (flags, data) if MODEL is or is inside an
    experiment folder, else {}."""
    folder = experiment_folder(model_path)
    if folder is None:
        return {}
    path = folder_lib.flags_path(folder)
    try:
        record = dict(folder_lib.read_flags(folder) or {})
        record["flags"] = dict(record.get("flags") or {})
        record["data"] = dict(record.get("data") or {})
        return record
    except (OSError, ValueError, TypeError, AttributeError) as e:
        fail(f"cannot read {path}: {e}")


def precheck(args):
    """The checks of the arguments, before the model and the data load."""
    if not os.path.exists(args.model):
        fail(f"model {args.model} does not exist")
    if args.batch_size < 1:
        fail(f"--batch_size must be >= 1, got {args.batch_size}")
    eps = None
    if args.fgsm is not None:
        try:
            eps = check_eps_list(args.fgsm)
        except ValueError as e:
            fail(f"--fgsm: {e}")
    elif args.fsgm_attack:
        eps = list(FGSM_EPS)
    if args.affine_test and not args.affine_path:
        fail("--affine_test needs --affine_path DIR (made by patchup-make-affine-sets)")
    record = _experiment_record(args.model)
    flags = record.get("flags", {})
    dataset = args.dataset or flags.get("dataset")
    if dataset is None:
        fail(f"give --dataset (the model is not in an experiment folder with "
             f"{folder_lib.FLAGS_FILE})")
    if dataset not in DATASETS:
        fail(f"the experiment's data set {dataset!r} is not one of {', '.join(DATASETS)}")
    if args.dataset and flags.get("dataset") and args.dataset != flags["dataset"]:
        print(f"note: the model was trained on {flags['dataset']}, evaluating on "
              f"{args.dataset}", file=sys.stderr)
    data_dir = args.data_dir if args.data_dir is not None else flags.get("data_dir")
    if dataset == FOLDER and data_dir is None:
        fail("--dataset folder needs --data_dir DIR (the image folder's test/ is evaluated)")
    if args.affine_path:
        from patchup_tf.app.cli.tf_logging import import_tensorflow

        import_tensorflow()  # the checks of the sets need patchup_tf.app.evaluation
        from patchup_tf.app.evaluation.affine import AFFINE_SETS
        from patchup_tf.app.evaluation.report import EvaluationError, affine_set_paths

        try:
            affine_set_paths(args.affine_path, dataset)
        except EvaluationError as e:
            fail(str(e))
        for name in AFFINE_SETS:
            _check_set_name(os.path.join(args.affine_path, f"{name}.npz"), name)
    # The experiment's class order and normalisation, if it is this data set's.
    trained = record.get("data", {}) if flags.get("dataset") == dataset else {}
    return dataset, data_dir, eps, trained


def _check_set_name(path, name):
    """Reads only the set's JSON description: a renamed or copied file fails
    here, before the model and the data are loaded (the full check follows)."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as data:
            description = json.loads(str(data["description"]))
        held = description["name"]
    except Exception:  # unreadable: load_affine_set reports it in full later
        return
    if held != name:
        fail(f"deformed set {path} holds set {held!r}, not {name!r}; remake the sets "
             "with patchup-make-affine-sets")


@program
def main(argv=None):
    args = build_parser().parse_args(argv)
    dataset, data_dir, eps, trained = precheck(args)
    out = args.out or folder_lib.evaluation_path(args.model)
    from patchup_tf.app.cli.tf_logging import import_tensorflow

    import_tensorflow()
    from patchup_tf.app.data import DataError, load_test_split
    from patchup_tf.app.evaluation.report import (
        EvaluationError,
        affine_set_paths,
        evaluate_model,
        format_results,
        load_model,
    )
    from patchup_tf.files import write_json

    try:
        loaded = load_model(args.model)
        height, width = (tuple(loaded.input_shape) + (None, None))[:2]
        raw = load_test_split(dataset, data_dir, image_size=height if height == width else None,
                              class_names=trained.get("class_names"),
                              skip_bad_images=args.skip_bad_images)
        affine_paths = (affine_set_paths(args.affine_path, dataset) if args.affine_path
                        else None)
        mean_std = (trained["mean"], trained["std"]) if "mean" in trained else None
        results = evaluate_model(
            loaded, dataset, raw, affine_paths=affine_paths, eps_list=eps,
            batch_size=args.batch_size, data_dir=data_dir, mean_std=mean_std,
        )
    except (EvaluationError, DataError) as e:
        fail(str(e))
    print(format_results(results))
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    write_json(out, results)
    print(f"\nresults written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
