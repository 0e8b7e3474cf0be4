"""The command line of the reference's `main.py`, and how it maps to a run.

Every flag of the seed's commands keeps its name and meaning; unset
method flags take the paper's settings for the chosen method (the
reference's argparse defaults, such as `--alpha 0`, are not the paper's).
"""

import argparse
import json
import math
import os
from typing import NamedTuple, Optional

# Nothing here imports TensorFlow: a bad command line is answered at once.
from patchup_tf.errors import UsageError
from patchup_tf.app.constants import DATASETS, FOLDER, PRECISIONS
from patchup_tf.app.folder import FLAGS_FILE
from patchup_tf.rules import (ARCHS, DEFAULT_METHOD, METHOD_SPECS, METHODS, OPTIONS,
                              PAPER_DEFAULTS, PATCHUP_MODES, application_name,
                              schedule_problem)

# The reference's --train values: the PatchUp methods share one, with --patchup_type.
TRAIN_CHOICES = tuple(dict.fromkeys(spec.reference_train for spec in METHOD_SPECS.values()))
_SHARED_TRAIN = tuple(train for train in TRAIN_CHOICES
                      if sum(s.reference_train == train for s in METHOD_SPECS.values()) > 1)
# Every flag that sets a method option, and the option's name.
OPTION_FLAGS = {
    **{o.flag: key for key, o in OPTIONS.items() if o.flag},
    **{spec.block_flag: "block_size" for spec in METHOD_SPECS.values() if spec.block_flag},
}
DIGITS_EPOCHS = 30  # the digits set's default: the paper's 400-2000 epochs are for CIFAR
# Accepted for the PyTorch original's command lines; they change nothing here.
COMPAT_FLAGS = ("dropout", "evaluate", "data_aug", "print_freq", "start_epoch", "ngpu",
                "workers", "manualSeed")
# Flags that change where and how a run is written or reported, not what it
# trains (--deterministic, --strategy and --jit_compile at most the last bits).
OUTPUT_FLAGS = ("root_dir", "data_dir", "verbose", "resume", "strategy", "jit_compile",
                "checkpoint", "fsgm_attack", "affine_test", "affine_path", "deterministic")
# Flags replaced by a resolved value in flags.json (the method, its options, the schedule).
RESOLVED_FLAGS = ("train", "method", "patchup_type", "epochs", "schedule", "step_factors",
                  "precision", "mixed_precision", *(flag[2:] for flag in OPTION_FLAGS))
# Runs that differ only in these are replicates of one setting.
REPLICATE_FLAGS = ("seed", "job_id")
_NOT_IDENTITY = frozenset((*OUTPUT_FLAGS, *COMPAT_FLAGS, *RESOLVED_FLAGS))
_KNOWN_AT_RUN_TIME = ("precision", "data")


class FlagError(UsageError):
    """A command line that cannot run; the message says why and what to do."""


def str2bool(value):
    """Accepts the reference's string booleans ('True'/'False') and the usual spellings."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "t", "yes", "y", "1"):
        return True
    if text in ("false", "f", "no", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {value!r}")


def _bool_flag(parser, name, help_text, default=False):
    # `--flag`, `--flag True` and `--flag False` all work (the seed uses both forms).
    parser.add_argument(name, type=str2bool, nargs="?", const=True, default=default, help=help_text)


def build_parser():
    """The trainer's flags: the PyTorch original's, and those beyond its recipe."""
    p = argparse.ArgumentParser(
        prog="train.py",
        description="Train a CNN with PatchUp or a baseline, with the reference's flags.",
    )
    for add in (_data_flags, _method_flags, _recipe_flags, _run_flags):
        add(p)
    return p


def _data_flags(p):
    """The data and the network."""
    g = p.add_argument_group("data and network")
    a = g.add_argument
    a("--dataset", default="cifar10", choices=DATASETS)
    a("--data_dir", default=None,
      help="torchvision files or prepared TFDS data (not needed for digits), or a folder of "
           "images: DIR/train/<class>/*.jpg, DIR/test/<class>/..., optionally DIR/valid/<class>/ "
           "(--dataset folder; --dataset cifar10 reads CIFAR-10's classes from one too)")
    _bool_flag(g, "--skip_bad_images", "image folders: leave unreadable files out (counted "
               f"and listed in {FLAGS_FILE}) instead of stopping")
    a("--labels_per_class", type=int, default=None, help="training samples per class (default: the dataset's)")
    a("--valid_labels_per_class", type=int, default=None, help="validation samples per class (default: the dataset's)")
    a("--arch", default="preactresnet18", type=arch_name, metavar="ARCH",
      help=f"{', '.join(ARCHS)}, or keras:<Name> for any keras.applications network "
      "(e.g. keras:ResNet50V2), with the method attached at its cut points")
    a("--image_size", type=int, default=None,
      help="resize every image to this square (default: the data set's own, 32; an image "
           "folder's, when all its images are one size)")
    a("--weights", default=None,
      help="keras:<Name> archs only: a weights file for the backbone, or imagenet")


def _method_flags(p):
    """The method and its options (unset: the paper's settings), from the method table."""
    g = p.add_argument_group("method")
    a = g.add_argument
    a("--train", default=None, choices=TRAIN_CHOICES, help="the reference's method flag")
    a("--method", default=None, choices=METHODS, help="short form, e.g. soft_patchup")
    a("--patchup_type", default=None, choices=PATCHUP_MODES,
      help=f"with --train {' or --train '.join(_SHARED_TRAIN)}: which of them")
    for flag, key in OPTION_FLAGS.items():
        option = OPTIONS[key]
        help_text = option.help if option.data_default else (
            f"{option.help} ({option_defaults(key, flag)})")
        if option.type is bool:
            _bool_flag(g, flag, help_text, default=option.flag_default)
        else:
            a(flag, type=option.type, nargs=option.nargs, choices=option.choices,
              default=option.flag_default, help=help_text)
    a("--mix_off_epoch", type=int, default=None,
      help="mix in the first E epochs only; epochs E+1.. train on clean targets "
           "(default: never stop)")


def option_defaults(key, flag):
    """What an unset `flag` (the option `key`) takes, per method: `"mixup 1.0;
    soft_patchup, hard_patchup 2.0"`, or `"every method: bce"`."""
    specs = [spec for spec in METHOD_SPECS.values()
             if key in spec.options() and spec.flag_of(key) == flag]
    if len(specs) == len(METHOD_SPECS):
        return f"every method: {_shown(specs[0].options()[key])}"
    groups = {}
    for spec in specs:
        groups.setdefault(_shown(spec.options()[key]), []).append(spec.name)
    return "; ".join(f"{', '.join(names)}: {value}" for value, names in groups.items())


def _shown(value):
    """An option value as a flag spells it."""
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _recipe_flags(p):
    """The optimiser and the schedule."""
    g = p.add_argument_group("recipe")
    a = g.add_argument
    a("--epochs", type=int, default=None,
      help=f"default: 2000 PreActResNet, 400 WRN (the paper's); {DIGITS_EPOCHS} on digits")
    a("--batch_size", type=int, default=100)
    a("--learning_rate", type=float, default=0.1)
    a("--momentum", type=float, default=0.9)
    a("--decay", type=float, default=1e-4, help="coupled L2 weight decay")
    a("--schedule", type=int, nargs="+", default=None, help="lr milestones (epochs)")
    a("--step_factors", type=float, nargs="+", default=None, help="lr factor at each milestone")
    a("--seed", type=int, default=0)


def _run_flags(p):
    """Where and how the run is written, and the flags accepted for the original's command lines."""
    g = p.add_argument_group("run")
    a = g.add_argument
    a("--root_dir", default="experiments", help="folder where experiment folders are created")
    a("--job_id", default="")
    a("--add_name", default="")
    _bool_flag(g, "--checkpoint", "also keep the last checkpoint as the reference's --checkpoint")
    _bool_flag(g, "--affine_test", "evaluate the deformed CIFAR-100 sets in --affine_path")
    a("--affine_path", default=None, help="folder written by scripts/make_affine_sets.py")
    _bool_flag(g, "--fsgm_attack", "run the FGSM sweep on the test set at the end")
    a("--precision", default="auto", choices=("auto", *PRECISIONS),
      help="auto: mixed_bfloat16 on a GPU with bf16 units, or on a CPU where one timed "
           "step of this network shows bf16 faster (measured once per machine, cached)")
    _bool_flag(g, "--mixed_precision", "shorthand for --precision mixed_bfloat16")
    _bool_flag(g, "--jit_compile", "compile the train step with XLA")
    a("--strategy", default="default", choices=("default", "mirrored", "multi_worker"))
    _bool_flag(g, "--deterministic", "deterministic TensorFlow kernels: the same command gives "
               "bitwise the same run on the same machine (default: True)", default=True)
    _bool_flag(g, "--resume", "continue the experiment folder's last completed epoch (also automatic)")
    a("--verbose", type=int, default=1, choices=(0, 1, 2), help="Keras progress bar mode")
    # Accepted for compatibility with the reference; they change nothing here.
    for name in COMPAT_FLAGS:
        if name in ("dropout", "evaluate"):
            _bool_flag(g, f"--{name}", argparse.SUPPRESS)
        else:
            a(f"--{name}", type=int, default=None, help=argparse.SUPPRESS)


def arch_name(value):
    """`--arch`: a paper architecture or `keras:<keras.applications name>`."""
    if value in ARCHS:
        return value
    if application_name(value) is not None:
        from patchup_tf.models.applications import APPLICATION_NAMES

        if application_name(value) in APPLICATION_NAMES:
            return value
        raise argparse.ArgumentTypeError(
            f"{value!r}: no keras.applications network of that name; valid names: "
            f"{', '.join(APPLICATION_NAMES)}")
    raise argparse.ArgumentTypeError(
        f"invalid choice: {value!r} (choose from {', '.join(ARCHS)}, or keras:<Name>)")


def check_image_size(args):
    """`--image_size` and `--weights` against the arch; raises `FlagError`."""
    name = application_name(args.arch)
    if name is None:
        if args.image_size not in (None, 32):
            raise FlagError(f"--image_size {args.image_size}: the paper's architectures take "
                            "32x32 images; use a keras:<Name> arch for other sizes")
        if args.weights is not None:
            raise FlagError("--weights is for keras:<Name> archs only")
        return
    from patchup_tf.models.applications import min_input_size

    size = 32 if args.image_size is None else args.image_size
    if size < min_input_size(name):
        raise FlagError(f"--image_size {size}: {name} needs images of at least "
                        f"{min_input_size(name)}x{min_input_size(name)}; use --image_size "
                        f"{min_input_size(name)} or more")
    if args.weights not in (None, "imagenet") and not os.path.isfile(args.weights):
        raise FlagError(f"--weights {args.weights}: no such file (give a weights file or "
                        "imagenet)")


def resolve_method(args):
    """The method name from `--method` or `--train`/`--patchup_type`."""
    shared = args.train in _SHARED_TRAIN
    from_train = _method_of_train(args.train, args.patchup_type) if args.train else None
    if args.method and from_train and args.method != from_train:
        raise FlagError(
            f"--method {args.method} contradicts --train {args.train}"
            + (f" --patchup_type {args.patchup_type}" if shared else "")
            + "; give one of them"
        )
    method = args.method or from_train or DEFAULT_METHOD
    mode = METHOD_SPECS[method].patchup_mode
    if args.patchup_type and mode is None:
        raise FlagError(f"--patchup_type is only for PatchUp; the method is {method}")
    if args.patchup_type and mode != args.patchup_type:
        raise FlagError(f"--method {method} contradicts --patchup_type {args.patchup_type}")
    return method


def _method_of_train(train, patchup_type):
    """The method that the reference's `--train` (and `--patchup_type`) name."""
    specs = [spec for spec in METHOD_SPECS.values() if spec.reference_train == train]
    if len(specs) == 1:
        return specs[0].name
    if patchup_type is None:
        raise FlagError(f"--train {train} needs "
                        + " or ".join(f"--patchup_type {s.patchup_mode}" for s in specs))
    return next(s.name for s in specs if s.patchup_mode == patchup_type)


def method_options(args, method):
    """The options of `method` that the flags set (the rest keep the paper's).

    A method-option flag the method does not use is a `FlagError`, as the
    Python API refuses the option.
    """
    spec = METHOD_SPECS[method]
    used = {spec.flag_of(key): key for key in spec.options()}
    unused = [flag for flag in OPTION_FLAGS
              if flag not in used and getattr(args, flag[2:]) is not None]
    if unused:
        raise FlagError(
            f"{', '.join(unused)} {'is' if len(unused) == 1 else 'are'} not used by --method "
            f"{method}; remove {'it' if len(unused) == 1 else 'them'} (its options: "
            f"{', '.join(sorted(used))})")
    options = {key: getattr(args, flag[2:]) for flag, key in used.items()
               if getattr(args, flag[2:]) is not None}
    for key in spec.defaults:
        if key not in options and OPTIONS[key].data_default is not None:
            options[key] = OPTIONS[key].data_default(args.dataset, args.arch)
    return options


def check_values(args, method, options):
    """Range checks of the flags, without TensorFlow: the method table's
    validators (the same as `patchup_tf.methods.Method`'s), phrased with the
    flags' names; raises `FlagError`."""
    def bad(flag, value, expected):
        raise FlagError(f"{flag} {value}: expected {expected}")

    spec = METHOD_SPECS[method]
    for key, value in options.items():
        try:
            OPTIONS[key].check(value, spec)
        except ValueError as e:
            raise FlagError(f"{spec.flag_of(key)} {_shown(value)}: {e}") from None
    for flag, value, ok, expected in (
        ("--learning_rate", args.learning_rate, lambda v: math.isfinite(v) and v > 0, "a float > 0"),
        ("--momentum", args.momentum, lambda v: math.isfinite(v) and v >= 0, "a float >= 0"),
        ("--decay", args.decay, lambda v: math.isfinite(v) and v >= 0, "a float >= 0"),
        ("--labels_per_class", args.labels_per_class, lambda v: v is None or v >= 1, "an int >= 1"),
        ("--valid_labels_per_class", args.valid_labels_per_class, lambda v: v is None or v >= 1,
         "an int >= 1 (model selection needs a validation split)"),
    ):
        if not ok(value):
            bad(flag, value, expected)
    if args.seed < 0:
        bad("--seed", args.seed, "an int >= 0")
    mix_off = getattr(args, "mix_off_epoch", None)
    if mix_off is not None:
        if mix_off < 0:
            bad("--mix_off_epoch", mix_off, "an int >= 0 (a 0-based epoch index)")
        if METHOD_SPECS[method].positions == "none":
            raise FlagError(f"--mix_off_epoch is not used by --method {method} (it never "
                            "mixes); remove it")


def resolve_schedule(args):
    """`(epochs, schedule, step_factors)`, the paper's for the arch when unset."""
    wrn = args.arch.startswith("wrn")
    if args.dataset == "digits":
        paper_epochs, paper_schedule = DIGITS_EPOCHS, []
    else:
        paper_epochs, paper_schedule = (400, [200, 300]) if wrn else (2000, [500, 1000, 1500])
    epochs = args.epochs if args.epochs is not None else paper_epochs
    schedule = args.schedule if args.schedule is not None else paper_schedule
    factors = args.step_factors if args.step_factors is not None else [0.1] * len(schedule)
    problem = schedule_problem(schedule, factors)
    if problem == "length":
        raise FlagError(
            f"--schedule has {len(schedule)} milestones ({schedule}) but --step_factors has "
            f"{len(factors)} ({factors}); give one factor per milestone"
        )
    if problem == "order":
        raise FlagError(f"--schedule must be ascending, got {schedule}")
    if epochs < 1:
        raise FlagError(f"--epochs must be >= 1, got {epochs}")
    if args.batch_size < 1:
        raise FlagError(f"--batch_size must be >= 1, got {args.batch_size}")
    return epochs, list(schedule), list(factors)


def dataset_label(args):
    """The data set in a folder name: `folder-<the folder's name>` for an image folder."""
    if args.dataset != FOLDER:
        return args.dataset
    base = os.path.basename(os.path.normpath(os.path.abspath(args.data_dir)))
    return "folder-" + "".join(c if c.isalnum() or c in "._-" else "_" for c in base)


def experiment_name(args, method, epochs):
    """The reference's folder name, built from the same flags.

    Method options enter with their resolved values (the paper's when
    unset), so runs with other settings never share a folder and the same
    run, with or without the default flags spelled out, always does.
    """
    spec = METHOD_SPECS[method]
    o = {**PAPER_DEFAULTS[method], **method_options(args, method)}
    name = (f"{dataset_label(args)}_arch_{args.arch.replace(':', '-')}"
            f"_train_{spec.reference_train}_m_alpha_{o.get('alpha', 0.0)}"
            f"_eph_{epochs}_bs_{args.batch_size}_lr_{args.learning_rate}_mom_{args.momentum}"
            f"_decay_{args.decay}_seed_{args.seed}")
    if args.image_size not in (None, 32):
        name += f"_image_size_{args.image_size}"
    if args.weights is not None:
        name += f"_weights_{os.path.splitext(os.path.basename(args.weights))[0]}"
    if args.add_name:
        name += f"_add_name_{args.add_name}"
    name += method_name_part(spec, o)
    if getattr(args, "mix_off_epoch", None) is not None:
        name += f"_mix_off_epoch_{args.mix_off_epoch}"
    if args.job_id:
        name += f"_job_id_{args.job_id}"
    return name


def method_name_part(spec, options):
    """The method's options in an experiment name, as the method table says
    (`Option.in_name`, `rules.NAME_ORDER`): `_k_2_cutmix_prob_0.4...`."""
    part = ""
    for key in spec.name_fields():
        if key not in OPTIONS:  # an attribute of the method: `patchup_mode`
            part += f"_{key}_{getattr(spec, key)}"
            continue
        option, value = OPTIONS[key], options[key]
        label = option.label or spec.flag_of(key)[2:]
        if option.in_name == "changed" and _same(value, spec.options()[key]):
            continue
        if option.in_name == "changed" and option.type is bool:
            part += f"_{label}"
        else:
            part += f"_{label}_{_shown(value).replace(' ', '_')}"
    return part


def _same(value, default):
    """An option's value equals its default (a flag's list as the table's tuple)."""
    return (tuple(value) if isinstance(value, list) else value) == default


class RunConfig(NamedTuple):
    """One run of the trainer: its flags and what they resolve to.

    `RunConfig.from_argv` parses and checks a command line without importing
    TensorFlow; `to_json()` is the experiment folder's `flags.json`;
    `identity()` says which run it is (see `identity_of`).
    """

    args: argparse.Namespace
    method: str
    method_options: dict
    epochs: int
    schedule: list
    step_factors: list
    name: str  # the experiment folder's name
    argv: list
    precision: Optional[str] = None  # the Keras dtype policy; None: `auto`, chosen at run time
    data: Optional[dict] = None  # what the data turned out to be (`run.describe_data`)

    @classmethod
    def from_argv(cls, argv, parser=None):
        """Parses and checks `argv` (with `parser`, default `build_parser()`);
        raises `FlagError` naming the flag (argparse's own syntax errors exit 2
        with its usage line)."""
        args = (parser or build_parser()).parse_args(list(argv))
        method = resolve_method(args)
        epochs, schedule, factors = resolve_schedule(args)
        options = method_options(args, method)
        check_values(args, method, options)
        check_image_size(args)
        if args.affine_test and not args.affine_path:
            raise FlagError("--affine_test needs --affine_path DIR (made by "
                            "patchup-make-affine-sets)")
        if args.dataset == FOLDER and not args.data_dir:
            raise FlagError("--dataset folder needs --data_dir DIR, a folder of images: "
                            "DIR/train/<class>/*.jpg and DIR/test/<class>/... (JPEG, PNG, BMP "
                            "or GIF)")
        name = experiment_name(args, method, epochs)
        if len(name.encode()) > 255:
            raise FlagError(
                f"the experiment folder name would be {len(name.encode())} bytes long, more "
                "than file systems allow (255); shorten --add_name or --job_id")
        precision = "mixed_bfloat16" if args.mixed_precision else (
            None if args.precision == "auto" else args.precision)
        return cls(args, method, options, epochs, schedule, factors, name, list(argv), precision)

    @property
    def experiment_dir(self):
        return os.path.join(self.args.root_dir, self.name)

    def to_json(self):
        """The `flags.json` of the experiment folder."""
        return {
            "flags": vars(self.args), "method": self.method,
            "method_options": self.method_options, "epochs": self.epochs,
            "schedule": self.schedule, "step_factors": self.step_factors,
            "experiment_dir": self.experiment_dir, "argv": self.argv,
            "precision": self.precision, "data": self.data,
        }

    def identity(self):
        return identity_of(self.to_json())


def identity_of(config):
    """Which run a `flags.json` describes, as one flat dict.

    The resolved method, its options (the paper's where unset), epochs,
    schedule, step factors and precision, then every other flag except
    those that only say where and how the run is written (`OUTPUT_FLAGS`),
    the original's no-op flags (`COMPAT_FLAGS`) and the flags replaced by a
    resolved value (`RESOLVED_FLAGS`). Two runs with the same identity are
    the same run; runs that differ only in `REPLICATE_FLAGS` are replicates
    of one setting. Resume, `sweep` and `compare` all go by it.
    """
    flags, method = config.get("flags"), config.get("method")
    if not isinstance(flags, dict) or not isinstance(method, str):
        raise ValueError(f"{FLAGS_FILE} lacks the run's flags or method")
    fields = {"method": method}
    for key in ("dataset", "arch"):
        if key in flags:
            fields[key] = flags[key]
    for key in ("epochs", "schedule", "step_factors", "precision", "data"):
        if key in config:
            fields[key] = config[key]
    for key in sorted(flags):
        if key not in _NOT_IDENTITY and key not in fields:
            fields[key] = flags[key]
    options = {**PAPER_DEFAULTS.get(method, {}), **(config.get("method_options") or {})}
    for key in sorted(options):
        fields[key] = options[key]
    return json.loads(json.dumps(fields, default=list))


def differences(saved, now):
    """The identity fields in which two `flags.json` differ. Fields only one
    of them has (a flag added by a later version), and a precision or data
    not known yet (None, before the run starts), match anything."""
    a, b = identity_of(saved), identity_of(now)
    return [key for key in a if key in b and a[key] != b[key]
            and not (key in _KNOWN_AT_RUN_TIME and None in (a[key], b[key]))]
