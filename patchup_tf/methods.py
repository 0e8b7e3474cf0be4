"""The eight training methods: their options, per-batch plan, mixing and loss.

A `Method` holds one method's options (the paper's settings by default). Per
batch, `draw_plan` draws everything random once (is this a mixing step, the
position `l`, `lam`, the permutation, a seed for masks and boxes); `mix`
applies the method at one position given that plan; `loss` forms SPEC's loss
from the targets the mixing produced. `train_step` and the mixing-point
layers share one plan, so every position sees the same draw.
"""

import collections
import math
import numbers

import tensorflow as tf

from patchup_tf import mixing

from patchup_tf.defaults import (  # noqa: F401  (re-exported)
    COMMON_DEFAULTS,
    METHODS,
    NUM_POSITIONS,
    PAPER_DEFAULTS,
)


def _invalid(name, expected, value):
    return mixing._invalid(name, expected, value)


class MixState(collections.namedtuple("MixState", ["y_a", "y_b", "y_mix", "u"])):
    """`(y_a, y_b, y_mix, u)`: what the loss needs from the mixing."""

    __slots__ = ()

    @classmethod
    def clean(cls, targets):
        """The state of an unmixed batch: `y_a = y_b = y_mix = y`, `u = 1`."""
        return cls(targets, targets, targets, tf.constant(1.0, tf.float32))


class Method:
    """One training method with validated options.

    Args:
        name: one of `METHODS`.
        **options: the method's options (see `PAPER_DEFAULTS`) and `loss`
            (`"bce"`, the reference's BCE on softmax, or `"ce"`). Unset
            options take the paper's settings; an option the method does
            not use is an error.
    """

    def __init__(self, name="vanilla", **options):
        if name not in METHODS:
            raise _invalid("method", f"one of {', '.join(METHODS)}", name)
        allowed = {**PAPER_DEFAULTS[name], **COMMON_DEFAULTS}
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ValueError(
                f"Invalid option(s) {unknown} for method '{name}'. "
                f"It accepts: {sorted(allowed)}."
            )
        self.name = name
        self.options = {**allowed, **options}
        self._validate()

    # ----------------------------------------------------------- options
    def __getattr__(self, key):
        options = self.__dict__.get("options", {})
        if key in options:
            return options[key]
        raise AttributeError(key)

    def _validate(self):
        o = self.options
        if o["loss"] not in mixing.LOSSES:
            raise _invalid("loss", "one of 'bce', 'ce'", o["loss"])
        if "k" in o:
            low = 1 if self.name == "dropblock" else 0
            if not _is_int(o["k"]) or not low <= o["k"] <= NUM_POSITIONS - 1:
                raise _invalid("k", f"an int in {low}..{NUM_POSITIONS - 1}", o["k"])
        if "alpha" in o and not (_is_real(o["alpha"]) and math.isfinite(o["alpha"])):
            raise _invalid("alpha", "a finite float (<= 0 disables mixing)", o["alpha"])
        if "patchup" in self.name and not (_is_real(o["alpha"]) and o["alpha"] > 0):
            raise _invalid("alpha", "a float > 0 for PatchUp", o["alpha"])
        for key in ("gamma", "keep_prob"):
            if key in o:
                mixing._check_prob(key, o[key])
        for key in ("patchup_prob", "cutmix_prob"):
            if key in o:
                mixing._check_prob(key, o[key], allow_zero=True)
        if "block_size" in o:
            mixing._check_block(o["block_size"], None, None)
        if "cutout" in o and (not _is_int(o["cutout"]) or o["cutout"] < 0):
            raise _invalid("cutout", "an int >= 0 (the hole's side)", o["cutout"])
        if "dropblock_all" in o and not isinstance(o["dropblock_all"], bool):
            raise _invalid("dropblock_all", "True or False", o["dropblock_all"])
        if "loss_params" in o:
            try:
                lp = tuple(o["loss_params"])
            except TypeError:
                lp = (o["loss_params"],)
            if len(lp) != 2 or not all(_is_real(v) and math.isfinite(v) for v in lp):
                raise _invalid("loss_params", "two floats (alpha, beta)", lp)
            o["loss_params"] = tuple(float(v) for v in lp)

    def get_config(self):
        return {"name": self.name, **self.options}

    @property
    def is_patchup(self):
        return self.name.endswith("_patchup")

    @property
    def hidden_positions(self):
        """The positions >= 1 at which this method may act."""
        if self.name in ("manifold_mixup", "dropblock") or self.is_patchup:
            return tuple(range(1, self.k + 1))
        return ()

    # -------------------------------------------------------------- plan
    def draw_plan(self, seed, batch_size):
        """Draws the batch's plan from `seed` (int32[2]).

        Returns a dict of tensors: `apply` (bool, is this a mixing step),
        `active` (bool[5], the positions that act), `lam` (float32),
        `perm` (int32[N]), `seed` (int32[2], for masks and boxes).
        """
        s_apply, s_pos, s_lam, s_perm, s_mix, s_lam0 = mixing.split_seed(seed, 6)
        name, o = self.name, self.options
        prob = o.get("patchup_prob", o.get("cutmix_prob", 1.0))
        apply = mixing._uniform([], s_apply) < prob
        positions = tf.range(NUM_POSITIONS)
        if name == "vanilla":
            active = tf.zeros([NUM_POSITIONS], tf.bool)
        elif name in ("mixup", "cutout", "cutmix"):
            active = tf.equal(positions, 0)
        elif name == "dropblock" and o["dropblock_all"]:
            active = (positions >= 1) & (positions <= o["k"])
        else:
            low = 1 if name == "dropblock" else 0
            where = tf.random.stateless_uniform(
                [], s_pos, low, o["k"] + 1, dtype=tf.int32
            )
            active = tf.equal(positions, where)
        active = active & apply
        if name == "cutmix":
            lam = mixing.beta(1.0, s_lam)
        elif self.is_patchup:
            # l = 0 is CutMix with lam ~ Beta(1, 1); l >= 1 PatchUp with Beta(a, a).
            lam = tf.where(active[0], mixing.beta(1.0, s_lam0), mixing.beta(o["alpha"], s_lam))
        else:
            lam = mixing.beta(o.get("alpha", 1.0), s_lam)
        perm = mixing.permutation(batch_size, s_perm)
        return {"apply": apply, "active": active, "lam": lam, "perm": perm, "seed": s_mix}

    # ---------------------------------------------------------------- mix
    def mix(self, position, features, state, plan):
        """Applies the method at `position` (assumed active); returns `(features, state)`."""
        name, o = self.name, self.options
        y = state.y_a
        seed = tf.random.experimental.stateless_fold_in(plan["seed"], position)
        if name == "cutout":
            return mixing.cutout(features, size=o["cutout"], seed=seed), state
        if name == "dropblock":
            width = min(features.shape[1], features.shape[2])
            block = min(o["block_size"], width if width % 2 else width - 1)
            out = mixing.dropblock(
                features, keep_prob=o["keep_prob"], block_size=block, seed=seed
            )
            return out, state
        if name == "cutmix" or (self.is_patchup and position == 0):
            result = mixing.cutmix(
                features, y, lam=plan["lam"], perm=plan["perm"], seed=seed
            )
        elif self.is_patchup:
            width = min(features.shape[1], features.shape[2])
            result = mixing.patchup(
                features, y, mode=name.split("_")[0], gamma=o["gamma"],
                block_size=mixing.patchup_block_size(width, o["block_size"]),
                lam=plan["lam"], perm=plan["perm"], seed=seed,
            )
        else:  # mixup, manifold_mixup
            result = mixing.mixup(features, y, lam=plan["lam"], perm=plan["perm"])
        return result.features, MixState(result.y_a, result.y_b, result.y_mix, result.u)

    # --------------------------------------------------------------- loss
    def loss(self, logits, targets, state, plan):
        """SPEC's loss for this method (float32 scalar, mean over the batch).

        PatchUp steps: `a u L(y_a) + (1-u) L(y_b) + b L(y_mix)`, `(a, b) =
        loss_params`; other PatchUp steps `L(y)`. CutMix: `u L(y_a) + (1-u)
        L(y_b)`. Every other method: `L(y_mix)` (`= L(y)` when unmixed).
        """
        fn = mixing.LOSSES[self.options["loss"]]
        y_a, y_b, y_mix, u = state
        if self.is_patchup:
            a, b = self.options["loss_params"]
            mixed = a * u * fn(logits, y_a) + (1.0 - u) * fn(logits, y_b) + b * fn(logits, y_mix)
            return tf.where(plan["apply"], mixed, fn(logits, targets))
        if self.name == "cutmix":
            return u * fn(logits, y_a) + (1.0 - u) * fn(logits, y_b)
        return fn(logits, y_mix)


def _is_int(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v):
    return isinstance(v, numbers.Real) and not isinstance(v, bool)
