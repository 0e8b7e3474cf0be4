"""The rules: what each method is, its options, the names, every validator.

This module imports no TensorFlow, so the command line answers a bad flag
at once. Everything else reads it: `Method` (the plan and the loss), the
layers, the flags and the scripts. Adding a method is one `METHODS` entry
plus its pure op in `patchup_tf.mixing`. The formulas are stated in
`docs/methods.md`.
"""

import dataclasses
import math
import numbers
from typing import Optional, Tuple

import numpy as np

NUM_POSITIONS = 5  # 0 = input images, 1 = after the stem, 2..4 = after stages 1..3
ARCHS = ("preactresnet18", "preactresnet34", "wrn28_10", "wrn28_2")
LOSSES = ("bce", "ce")
PATCHUP_MODES = ("soft", "hard")
KERAS_ARCH_PREFIX = "keras:"  # --arch keras:<Name>: a keras.applications network


def application_name(arch):
    """`"ResNet50V2"` for the arch `"keras:ResNet50V2"`; None for a paper arch."""
    return arch[len(KERAS_ARCH_PREFIX):] if arch.startswith(KERAS_ARCH_PREFIX) else None


# ------------------------------------------------------------- validators
def invalid(name, expected, value):
    """The Keras-style error for a bad argument value."""
    return ValueError(
        f"Invalid value received for argument `{name}`. Expected {expected}. "
        f"Received: {name}={value!r}"
    )


def is_int(value):
    """A Python or NumPy integer, not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value):
    """A Python or NumPy real number, not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_prob(name, value, allow_zero=False):
    """A probability in (0, 1], or in [0, 1] with `allow_zero`; returns a float."""
    interval = "[0, 1]" if allow_zero else "(0, 1]"
    if not is_real(value):
        raise invalid(name, f"a float in {interval}", value)
    lower_ok = value >= 0 if allow_zero else value > 0
    if not (lower_ok and value <= 1):
        raise invalid(name, f"a float in {interval}", value)
    return float(value)


def check_alpha(value, positive=False, name="alpha"):
    """Beta's `alpha`: finite (`<= 0` disables mixing), or `> 0` with `positive`."""
    if positive:
        if not (is_real(value) and math.isfinite(value) and value > 0):
            raise invalid(name, "a float > 0 for PatchUp", value)
    elif not (is_real(value) and math.isfinite(value)):
        raise invalid(name, "a finite float (<= 0 disables mixing)", value)
    return float(value)


def check_label_smoothing(value):
    """Label smoothing's `eps`: a float in [0, 1) (0: hard targets)."""
    if not (is_real(value) and 0 <= value < 1):
        raise invalid("label_smoothing", "a float in [0, 1)", value)
    return float(value)


def check_epoch(name, value):
    """A 0-based epoch index: an int >= 0."""
    if not is_int(value) or value < 0:
        raise invalid(name, "an int >= 0 (a 0-based epoch index)", value)
    return int(value)


def check_block(block_size, height=None, width=None):
    """A positive odd block side, no larger than a `height x width` map if given."""
    if not is_int(block_size) or block_size < 1 or block_size % 2 == 0:
        raise invalid("block_size", "a positive odd int", block_size)
    if (height is not None and block_size > height) or (
        width is not None and block_size > width
    ):
        raise invalid(
            "block_size",
            f"an odd int no larger than the feature map ({height}x{width})",
            block_size,
        )
    return int(block_size)


def check_position(position, low=1):
    """A mixing position in `low..NUM_POSITIONS - 1`."""
    if not is_int(position) or not low <= position < NUM_POSITIONS:
        raise invalid("position", f"an int in {low}..{NUM_POSITIONS - 1}", position)
    return int(position)


def mixing_point_name(position):
    """The name of the `MixingPoint` at `position` (1..4) in the models built
    here and in attached ones: `mix_{position}`. Files saved before this rule
    may name attached points `mixing_point_{position}`: find points by their
    `position`, not by name."""
    return f"mix_{check_position(position)}"


def check_seed(seed, allow_none=True):
    """A Python or NumPy int (or None); returns a Python int or None."""
    if seed is None and allow_none:
        return None
    if not is_int(seed):
        raise invalid("seed", "an int", seed)
    return int(seed)


def check_int(name, value, minimum, allow_none=False):
    """An int >= `minimum` (or None if allowed); returns a Python int or None."""
    if value is None and allow_none:
        return None
    if not is_int(value) or value < minimum:
        raise invalid(name, f"an integer >= {minimum}" + (" or None" if allow_none else ""),
                      value)
    return int(value)


def label_checks(k):
    """`(message, is_bad(labels))` of the class-label checks, in order, for a
    model with `k` classes (`labels`: a NumPy array or a tensor)."""
    return (
        ("Invalid labels: integer class labels are expected, received non-integral float "
         "labels (pass one-hot or soft targets of shape (N, K) for soft labels)",
         lambda v: v != np.round(v)),
        (f"Invalid labels: expected class labels in [0, {k}), received a negative label",
         lambda v: v < 0),
        (f"Invalid labels: expected class labels in [0, {k}) for a model with {k} outputs, "
         "received a larger label", lambda v: v >= k),
    )


def check_labels(values, k):
    """Raises the first of `label_checks(k)` that the labels `values` fail."""
    values = np.asarray(values)
    for message, is_bad in label_checks(k):
        if np.any(is_bad(values)):
            raise ValueError(message)


def check_patchup_mode(mode):
    if mode not in PATCHUP_MODES:
        raise invalid("mode", "one of 'soft', 'hard'", mode)
    return mode


def largest_odd(side):
    """The largest odd int `<= side` (at least 1)."""
    return max(1, side if side % 2 else side - 1)


def dropblock_block_size(width, block_size):
    """DropBlock's block on a map of this width: `block_size`, clipped to the
    largest odd side the map holds."""
    return min(block_size, largest_odd(width))


def patchup_block_size(width, block_size=7):
    """PatchUp's block on a map of this width: `block_size` (7) on 32-wide
    maps, at most 5 on 16-wide, at most 3 on 8-wide and smaller; never above
    the largest odd number `<= width`."""
    if width >= 32:
        b = block_size
    elif width >= 16:
        b = min(block_size, 5)
    else:
        b = min(block_size, 3)
    return min(b, largest_odd(width))


# ---------------------------------------------------------------- options
def _check_k(value, method):
    low = 1 if method.hidden_only else 0
    if not is_int(value) or not low <= value <= NUM_POSITIONS - 1:
        raise invalid("k", f"an int in {low}..{NUM_POSITIONS - 1}", value)
    return int(value)


def check_hole_size(name, value):
    """Cutout's hole side: an int >= 0 (0 cuts nothing)."""
    if not is_int(value) or value < 0:
        raise invalid(name, "an int >= 0 (the hole's side in pixels)", value)
    return int(value)


def _check_cutout(value, method):
    return check_hole_size("cutout", value)


def _check_bool(name):
    def check(value, method):
        if not isinstance(value, bool):
            raise invalid(name, "True or False", value)
        return value

    return check


def _check_loss_params(value, method):
    try:
        pair = tuple(value)
    except TypeError:
        pair = (value,)
    if len(pair) != 2 or not all(is_real(v) and math.isfinite(v) for v in pair):
        raise invalid("loss_params", "two floats (alpha, beta)", pair)
    return tuple(float(v) for v in pair)


def _check_loss(value, method):
    if value not in LOSSES:
        raise invalid("loss", "one of 'bce', 'ce'", value)
    return value


def paper_cutout(dataset, arch):
    """The paper's Cutout side: 20 on SVHN, 8 for WRN, 16 for PreActResNet."""
    if dataset == "svhn":
        return 20
    return 8 if arch.startswith("wrn") else 16


@dataclasses.dataclass(frozen=True)
class Option:
    """One method option.

    Attributes:
        check: its validator `check(value, method) -> value`.
        flag: its command-line flag (None: the method's `block_flag`).
        help: the flag's help text.
        type: the flag's value type (`bool`: `--flag`, `--flag True/False`).
        nargs: how many values the flag takes (None: one).
        choices: the values the flag accepts (None: any of `type`).
        flag_default: the flag's value when not given (None: the method's).
        data_default: `data_default(dataset, arch)`, the paper's setting
            for that data and network, which the trainer takes when unset
            (None: the method's default).
        in_name: when the option enters an experiment's name: `"always"`,
            `"changed"` (when it differs from the method's default; a bool
            then enters by its label alone), or None (never, or apart).
        label: its name in experiment names (None: the flag's, without
            the dashes).
    """

    check: object
    flag: Optional[str]
    help: str
    type: type = float
    nargs: Optional[int] = None
    choices: Optional[tuple] = None
    flag_default: object = None
    data_default: object = None
    in_name: Optional[str] = "always"
    label: Optional[str] = None


PAIRINGS = ("replica", "global")
"""Where a sample's partner comes from when several replicas train one batch."""

OPTIONS = {
    "alpha": Option(lambda v, m: check_alpha(v, positive=m.patchup_mode is not None),
                    "--alpha", "Beta(alpha, alpha) for lam", in_name=None),
    "gamma": Option(lambda v, m: check_prob("gamma", v), "--gamma",
                    "PatchUp: share of features to alter before the block adjustment"),
    "keep_prob": Option(lambda v, m: check_prob("keep_prob", v), "--keep_prob",
                        "DropBlock keep probability"),
    "patchup_prob": Option(lambda v, m: check_prob("patchup_prob", v, allow_zero=True),
                           "--patchup_prob", "probability of a PatchUp step"),
    "cutmix_prob": Option(lambda v, m: check_prob("cutmix_prob", v, allow_zero=True),
                          "--cutmix_prob", "probability of a CutMix step"),
    "block_size": Option(lambda v, m: check_block(v), None, "block side on 32-wide maps",
                         type=int),
    "cutout": Option(_check_cutout, "--cutout", "Cutout's hole side in pixels (default 16 "
                     "PreActResNet, 8 WRN, 20 SVHN)", type=int, data_default=paper_cutout),
    "dropblock_all": Option(_check_bool("dropblock_all"), "--drop_block_all",
                            "DropBlock at every position 1..k", type=bool,
                            label="dropblock_all"),
    "k": Option(_check_k, "--k", "positions 0..k may mix", type=int),
    "loss_params": Option(_check_loss_params, "--loss_params",
                          "PatchUp loss weights (alpha, beta)", nargs=2, in_name="changed"),
    "loss": Option(_check_loss, "--loss", "bce: BCE on softmax (the paper's); ce", type=str,
                   choices=LOSSES, flag_default="bce", in_name="changed"),
    "label_smoothing": Option(lambda v, m: check_label_smoothing(v), "--label_smoothing",
                              "eps: targets (1 - eps) y + eps / K before any mixing",
                              in_name="changed"),
    "per_sample": Option(_check_bool("per_sample"), "--per_sample",
                         "draw lam, boxes and masks per image instead of per batch", type=bool,
                         in_name="changed"),
    "pairing": Option(lambda v, m: check_choice("pairing", v, PAIRINGS), "--pairing",
                      "with several replicas: replica (a plan and partners per replica) or "
                      "global (one plan; partners from the whole global batch)", type=str,
                      choices=PAIRINGS, in_name="changed"),
    "prob": Option(lambda v, m: check_prob("prob", v, allow_zero=True), "--prob",
                   "probability of a mixing step"),
    "switch_prob": Option(lambda v, m: check_prob("switch_prob", v, allow_zero=True),
                          "--switch_prob", "probability that a step (an image with "
                          "per_sample) takes CutMix instead of Mixup"),
    "mixup_alpha": Option(lambda v, m: check_alpha(v, name="mixup_alpha"), "--mixup_alpha",
                          "Beta(a, a) for lam when Mixup is taken"),
    "cutmix_alpha": Option(lambda v, m: check_alpha(v, name="cutmix_alpha"), "--cutmix_alpha",
                           "Beta(a, a) for lam when CutMix is taken"),
}
"""Every method option, by its Python name."""

NAME_ORDER = ("k", "dropblock_all", "keep_prob", "block_size", "patchup_prob", "patchup_mode",
              "gamma", "loss_params", "cutout", "cutmix_prob", "loss", "mixup_alpha",
              "cutmix_alpha", "switch_prob", "prob", "per_sample", "label_smoothing", "pairing")
"""The order in which options (and `MethodSpec.patchup_mode`) enter experiment names."""

COMMON_DEFAULTS = {"loss": "bce", "label_smoothing": 0.0, "pairing": "replica"}
"""Options every method takes."""


# ---------------------------------------------------------------- methods
@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """What a method is.

    Attributes:
        name: the method's name.
        input_op: the op at position 0 (`"mixup"`, `"cutmix"`, `"cutout"`,
            `"mixup_cutmix"`) or None.
        hidden_op: the op at positions 1..k (`"mixup"`, `"dropblock"`,
            `"patchup"`) or None.
        positions: where a step acts: `"none"`, `"input"`, `"one_of_0_k"`
            (one position drawn uniformly per batch), `"one_of_1_k"`, or
            `"all_1_k"`; `all_option` (a bool option) switches
            `"one_of_1_k"` to `"all_1_k"`.
        prob_option: the option giving the probability of a mixing step
            (else every step mixes).
        input_alpha: `lam ~ Beta(input_alpha, input_alpha)` when the input
            mixes; a number, or the name of the option that holds it.
        hidden_alpha: the same for hidden positions (None: as the input).
        loss_form: `"mixed"` `L(y_mix)`; `"pair"` `u L(y_a) + (1-u) L(y_b)`;
            `"patchup"` `a u L(y_a) + (1-u) L(y_b) + b L(y_mix)` on mixing
            steps, `L(y)` on the others.
        patchup_mode: `"soft"` / `"hard"` for PatchUp, else None.
        defaults: the method's options with the paper's settings (a
            `per_sample` entry: the method can draw per image).
        block_flag: the command-line flag of `block_size`.
        switch_key: a second input law: with the probability in the option
            `switch_option`, a step (an image, with `per_sample`) takes
            `lam ~ Beta(switch_alpha, switch_alpha)` and the plan's
            `switch_key` (bool) says so; the input op reads it. None: no
            switch.
        switch_option: the option holding the switch probability.
        switch_alpha: the switched steps' alpha (a number or an option).
        train: the reference's `--train` value (None: the name); the
            methods that share one are told apart by `--patchup_type`, their
            `patchup_mode`.
    """

    name: str
    input_op: Optional[str]
    hidden_op: Optional[str]
    positions: str
    loss_form: str
    defaults: dict
    prob_option: Optional[str] = None
    input_alpha: object = "alpha"
    hidden_alpha: object = None
    all_option: Optional[str] = None
    patchup_mode: Optional[str] = None
    block_flag: Optional[str] = None
    switch_key: Optional[str] = None
    switch_option: Optional[str] = None
    switch_alpha: object = None
    train: Optional[str] = None

    @property
    def reference_train(self):
        """The reference's `--train` value for this method."""
        return self.train or self.name

    @property
    def sizes_blocks(self):
        """True if the method sizes its blocks from each feature map."""
        return "block_size" in self.defaults

    def name_fields(self):
        """The options (and `patchup_mode`) that may enter an experiment's
        name, in `NAME_ORDER`."""
        present = {*self.options(), *(("patchup_mode",) if self.patchup_mode else ())}
        return tuple(key for key in NAME_ORDER if key in present)

    @property
    def hidden_only(self):
        """True if the method never acts on the input (so `k >= 1`)."""
        return self.input_op is None and self.hidden_op is not None

    def options(self):
        """Every option this method accepts, with its default."""
        return {**self.defaults, **COMMON_DEFAULTS}

    def validate(self, options):
        """Returns `options` completed with the defaults and validated.

        Unset options take the paper's settings; an option the method does
        not use is a `ValueError` that lists the ones it takes.
        """
        allowed = self.options()
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ValueError(
                f"Invalid option(s) {unknown} for method '{self.name}'. "
                f"It accepts: {sorted(allowed)}."
            )
        merged = {**allowed, **options}
        return {key: OPTIONS[key].check(value, self) for key, value in merged.items()}

    def flag_of(self, option):
        """The command-line flag that sets `option` for this method."""
        return OPTIONS[option].flag or self.block_flag


_PATCHUP = {"alpha": 2.0, "patchup_prob": 1.0, "block_size": 7, "k": 2,
            "loss_params": (1.0, 1.0), "per_sample": False}


def _patchup(mode, gamma, prob):
    return MethodSpec(
        name=f"{mode}_patchup", input_op="cutmix", hidden_op="patchup",
        positions="one_of_0_k", loss_form="patchup", prob_option="patchup_prob",
        input_alpha=1.0, hidden_alpha="alpha", patchup_mode=mode,
        block_flag="--patchup_block", train="patchup",
        defaults={**_PATCHUP, "gamma": gamma, "patchup_prob": prob},
    )


_SPECS = (
    MethodSpec("vanilla", None, None, "none", "mixed", {}),
    MethodSpec("mixup", "mixup", None, "input", "mixed", {"alpha": 1.0, "per_sample": False}),
    MethodSpec("manifold_mixup", "mixup", "mixup", "one_of_0_k", "mixed",
               {"alpha": 1.5, "k": 2, "per_sample": False}),
    MethodSpec("cutout", "cutout", None, "input", "mixed", {"cutout": 16}),
    MethodSpec("cutmix", "cutmix", None, "input", "pair",
               {"cutmix_prob": 0.4, "per_sample": False},
               prob_option="cutmix_prob", input_alpha=1.0),
    MethodSpec("dropblock", None, "dropblock", "one_of_1_k", "mixed",
               {"block_size": 7, "keep_prob": 0.9, "dropblock_all": True, "k": 2,
                "per_sample": False},
               all_option="dropblock_all", block_flag="--drop_block"),
    _patchup("soft", 0.75, 1.0),
    _patchup("hard", 0.5, 0.7),
    # Not in the paper: timm's Mixup/CutMix switch (one op per batch, or per image).
    MethodSpec("mixup_cutmix", "mixup_cutmix", None, "input", "pair",
               {"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "switch_prob": 0.5, "prob": 1.0,
                "per_sample": False},
               prob_option="prob", input_alpha="mixup_alpha", switch_key="use_cutmix",
               switch_option="switch_prob", switch_alpha="cutmix_alpha"),
)

METHOD_SPECS = {spec.name: spec for spec in _SPECS}
"""The method table: name -> `MethodSpec`."""

METHODS = tuple(METHOD_SPECS)
DEFAULT_METHOD = "vanilla"
"""The method of a model or a run that names none: no mixing."""
PAPER_DEFAULTS = {name: spec.options() for name, spec in METHOD_SPECS.items()}
"""Options each method takes and their defaults (the paper's runs), the
common ones (`COMMON_DEFAULTS`) included."""


def method_spec(name):
    """The `MethodSpec` of `name`, or a `ValueError` listing the methods."""
    if name not in METHOD_SPECS:
        raise invalid("method", f"one of {', '.join(METHODS)}", name)
    return METHOD_SPECS[name]


def check_choice(name, value, choices):
    """`value` if it is one of `choices`, else a `ValueError` listing them."""
    if value not in choices:
        raise invalid(name, f"one of {', '.join(choices)}", value)
    return value


def schedule_problem(schedule, step_factors):
    """What breaks a step learning-rate schedule: `"length"` (not one factor
    per milestone), `"order"` (milestones not ascending), or None."""
    if len(schedule) != len(step_factors):
        return "length"
    if list(schedule) != sorted(schedule):
        return "order"
    return None


def hidden_positions(spec, options) -> Tuple[int, ...]:
    """The positions >= 1 at which a method with these options may act."""
    if spec.hidden_op is None:
        return ()
    return tuple(range(1, options["k"] + 1))
