"""Evaluate a trained model: test metrics, deformed CIFAR-100 sets, FGSM.

    python scripts/evaluate.py MODEL [--dataset cifar100] [--data_dir D]
        [--affine_path DIR] [--fsgm_attack True] [--fgsm 0 0.05 0.1 ...]
        [--batch_size 100] [--out results.json]

MODEL is an experiment folder written by scripts/train.py (its best.keras is
used and its flags.json gives the default --dataset and --data_dir), a
SavedModel folder (e.g. the experiment's saved_model/) or a .keras file.

Reported: top-1, top-5, error (%) and cross-entropy on the official test
set; with --affine_path, the same on each of the eight deformed CIFAR-100
sets made by scripts/make_affine_sets.py; with --fsgm_attack True (the
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
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from patchup_tf.experiment import fail  # noqa: E402  (TF-free)
from patchup_tf.flags import DATASETS, str2bool  # noqa: E402  (TF-free)
DEFAULT_EPS = (0.0, 0.05, 0.1, 0.12, 0.15, 0.18, 0.2)  # patchup_tf.evaluation.DEFAULT_EPS
AFFINE_NAMES = ("rotation_20", "rotation_40", "shear_28.6", "shear_57.3",
                "zoom_0.6", "zoom_0.8", "zoom_1.2", "zoom_1.4")  # AFFINE_SETS


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
                   help="torchvision files or prepared TFDS data (default: the experiment's)")
    p.add_argument("--affine_path", default=None,
                   help="folder of the eight deformed sets (scripts/make_affine_sets.py)")
    p.add_argument("--affine_test", type=str2bool, nargs="?", const=True, default=False,
                   help="accepted for the reference's command lines; --affine_path is enough")
    p.add_argument("--fsgm_attack", "--fgsm_attack", dest="fsgm_attack", type=str2bool,
                   nargs="?", const=True, default=False,
                   help="run the FGSM sweep at eps " + " ".join(f"{e:g}" for e in DEFAULT_EPS))
    p.add_argument("--fgsm", type=float, nargs="+", default=None, metavar="EPS",
                   help="run FGSM at these eps instead (implies the sweep)")
    p.add_argument("--batch_size", type=int, default=100,
                   help="evaluation batch size; FGSM clips to each batch's range (100)")
    p.add_argument("--out", default=None, help="JSON file for the results")
    return p


def _experiment_dataset(model_path):
    """The experiment's flags (dataset, data_dir) if MODEL is an experiment."""
    path = os.path.join(model_path, "flags.json")
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            return dict((json.load(f) or {}).get("flags") or {})
    except (OSError, ValueError, TypeError, AttributeError) as e:
        fail(f"cannot read {path}: {e}")


def default_out(model_path):
    path = os.path.normpath(model_path)
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "flags.json")):
        return os.path.join(path, "evaluation.json")
    if path.endswith(".keras"):
        path = path[: -len(".keras")]
    return path + ".evaluation.json"


def precheck(args):
    """The checks that need no TensorFlow, so bad input fails at once."""
    if not os.path.exists(args.model):
        fail(f"model {args.model} does not exist")
    if args.batch_size < 1:
        fail(f"--batch_size must be >= 1, got {args.batch_size}")
    eps = None
    if args.fgsm is not None:
        bad = [e for e in args.fgsm if not math.isfinite(e) or e < 0]
        if bad:
            fail(f"--fgsm eps must be finite numbers >= 0, got {bad[0]:g}")
        eps = list(args.fgsm)
    elif args.fsgm_attack:
        eps = list(DEFAULT_EPS)
    if args.affine_test and not args.affine_path:
        fail("--affine_test needs --affine_path DIR (made by scripts/make_affine_sets.py)")
    flags = _experiment_dataset(args.model) if os.path.isdir(args.model) else {}
    dataset = args.dataset or flags.get("dataset")
    if dataset is None:
        fail("give --dataset (the model is not an experiment folder with flags.json)")
    if dataset not in DATASETS:
        fail(f"the experiment's data set {dataset!r} is not one of {', '.join(DATASETS)}")
    if args.dataset and flags.get("dataset") and args.dataset != flags["dataset"]:
        print(f"note: the model was trained on {flags['dataset']}, evaluating on "
              f"{args.dataset}", file=sys.stderr)
    data_dir = args.data_dir if args.data_dir is not None else flags.get("data_dir")
    if args.affine_path:
        if dataset != "cifar100":
            fail("the deformed sets are CIFAR-100 test images; --affine_path needs "
                 f"--dataset cifar100, not {dataset}")
        if not os.path.isdir(args.affine_path):
            fail(f"--affine_path {args.affine_path} is not a folder; make the sets with: "
                 f"python scripts/make_affine_sets.py --affine_path {args.affine_path} "
                 "--data_dir <CIFAR-100 dir>")
        missing = [f"{n}.npz" for n in AFFINE_NAMES
                   if not os.path.isfile(os.path.join(args.affine_path, f"{n}.npz"))]
        if missing:
            fail(f"--affine_path {args.affine_path} lacks {', '.join(missing)}; make them "
                 f"with: python scripts/make_affine_sets.py --affine_path "
                 f"{args.affine_path} --data_dir <CIFAR-100 dir>")
        for name in AFFINE_NAMES:
            _check_set_name(os.path.join(args.affine_path, f"{name}.npz"), name)
    return dataset, data_dir, eps


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
             "with scripts/make_affine_sets.py")


def main(argv=None):
    args = build_parser().parse_args(argv)
    dataset, data_dir, eps = precheck(args)
    out = args.out or default_out(args.model)

    from patchup_tf.data import DataError, load_raw
    from patchup_tf.evaluation.report import (
        EvaluationError,
        affine_set_paths,
        evaluate_model,
        format_results,
        load_model,
    )
    from patchup_tf.experiment import write_json

    try:
        loaded = load_model(args.model)
        raw = load_raw(dataset, data_dir)
        affine_paths = affine_set_paths(args.affine_path) if args.affine_path else None
        results = evaluate_model(
            loaded, dataset, raw, affine_paths=affine_paths, eps_list=eps,
            batch_size=args.batch_size, data_dir=data_dir,
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
    sys.exit(main())
