"""The training methods: the per-batch plan, the mixing at a position, the loss.

A `Method` holds one method's validated options (the paper's settings by
default) and reads what the method *is* from the table in
`patchup_tf.rules`. Per batch, `draw_plan` draws everything random once (is
this a mixing step, the position `l`, `lam`, the permutation, a seed for
masks and boxes); `mix` applies the method at one position given that plan;
`loss` forms the method's loss from the `MixResult` the mixing produced.
`train_step` and the mixing-point layers share one plan, so every position
sees the same draw (`docs/methods.md`, "The plan").
"""

from keras import ops

from patchup_tf import draws, mixing
from patchup_tf.losses import LOSS_FUNCTIONS, PER_SAMPLE_LOSSES, smooth_labels
from patchup_tf.rules import (  # noqa: F401  (METHODS, NUM_POSITIONS, ... re-exported)
    COMMON_DEFAULTS,
    METHODS,
    NUM_POSITIONS,
    PAPER_DEFAULTS,
    dropblock_block_size,
    hidden_positions,
    method_spec,
    patchup_block_size,
)


def _width(features):
    return min(features.shape[1], features.shape[2])


def _mixup_op(method, position, result, plan, seed):
    return mixing.mixup(result.features, result.y_a, lam=plan["lam"], perm=plan["perm"])


def _cutmix_op(method, position, result, plan, seed):
    return mixing.cutmix(result.features, result.y_a, lam=plan["lam"], perm=plan["perm"],
                         seed=seed)


def _cutout_op(method, position, result, plan, seed):
    out = mixing.cutout(result.features, size=method.options["cutout"], seed=seed)
    return result._replace(features=out)


def _dropblock_op(method, position, result, plan, seed):
    o = method.options
    out = mixing.dropblock(
        result.features, keep_prob=o["keep_prob"],
        block_size=dropblock_block_size(_width(result.features), o["block_size"]), seed=seed,
        per_sample=o["per_sample"],
    )
    return result._replace(features=out)


def _patchup_op(method, position, result, plan, seed):
    o = method.options
    return mixing.patchup(
        result.features, result.y_a, mode=method.spec.patchup_mode, gamma=o["gamma"],
        block_size=patchup_block_size(_width(result.features), o["block_size"]),
        lam=plan["lam"], perm=plan["perm"], seed=seed, per_sample=o["per_sample"],
    )


def _mixup_cutmix_op(method, position, result, plan, seed):
    return mixing.mixup_cutmix(result.features, result.y_a, lam=plan["lam"],
                               perm=plan["perm"], use_cutmix=plan["use_cutmix"], seed=seed)


OPS = {
    "mixup": _mixup_op,
    "cutmix": _cutmix_op,
    "cutout": _cutout_op,
    "dropblock": _dropblock_op,
    "patchup": _patchup_op,
    "mixup_cutmix": _mixup_cutmix_op,
}
"""The table's op names -> `op(method, position, result, plan, seed) -> MixResult`."""


class Method:
    """One training method with validated options.

    Args:
        name: one of `METHODS`.
        **options: the method's options (`PAPER_DEFAULTS[name]`) and `loss`
            (`"bce"`, the paper's BCE on softmax, or `"ce"`). Unset options
            take the paper's settings; an option the method does not use is
            an error.
    """

    def __init__(self, name="vanilla", **options):
        self.spec = method_spec(name)
        self.name = name
        self.options = self.spec.validate(options)

    def __getattr__(self, key):
        options = self.__dict__.get("options", {})
        if key in options:
            return options[key]
        raise AttributeError(key)

    def get_config(self):
        return {"name": self.name, **self.options}

    @property
    def per_sample(self):
        """True if lam, boxes and masks are drawn per image (`per_sample`)."""
        return bool(self.options.get("per_sample", False))

    def smooth_targets(self, targets):
        """Label smoothing of one-hot targets `(N, K)` (`label_smoothing`):
        `(1 - eps) y + eps / K`; `targets` itself when `eps = 0`."""
        return smooth_labels(targets, self.options["label_smoothing"])

    def clean(self, features, targets):
        """The unmixed `MixResult` of a batch: `y_a = y_b = y_mix = y`, `u = 1`
        (`(N,)` ones with `per_sample`, so both branches of a step agree)."""
        result = mixing.MixResult.clean(features, targets)
        if self.per_sample:
            result = result._replace(u=ops.ones(ops.shape(result.y_a)[:1], "float32"))
        return result

    @property
    def is_patchup(self):
        return self.spec.patchup_mode is not None

    @property
    def acts_on_input(self):
        """True if the method may act on the input images (position 0)."""
        return self.spec.input_op is not None

    @property
    def hidden_positions(self):
        """The positions >= 1 at which this method may act."""
        return hidden_positions(self.spec, self.options)

    def acts_at(self, position):
        """True if the method may act at `position`."""
        return self.acts_on_input if position == 0 else position in self.hidden_positions

    # -------------------------------------------------------------- plan
    def _alpha(self, law):
        """A lam law's alpha: a number, or the option holding it (1.0 if unset)."""
        return self.options.get(law, 1.0) if isinstance(law, str) else law

    def _positions(self, s_pos):
        spec, o = self.spec, self.options
        positions = ops.arange(NUM_POSITIONS, dtype="int32")
        law = spec.positions
        if spec.all_option is not None and o[spec.all_option]:
            law = "all_1_k"
        if law == "none":
            return ops.zeros([NUM_POSITIONS], "bool")
        if law == "input":
            return ops.equal(positions, 0)
        if law == "all_1_k":
            return ops.logical_and(positions >= 1, positions <= o["k"])
        low = 1 if law == "one_of_1_k" else 0
        return ops.equal(positions, draws.randint((), s_pos, low, o["k"] + 1))

    def draw_plan(self, seed, batch_size, groups=1):
        """Draws the batch's plan from `seed` (int32[2]); with `groups > 1`
        partners are drawn within each of `groups` equal consecutive parts
        of the batch (`mixing.permutation`).

        Returns a dict of tensors: `apply` (bool, is this a mixing step),
        `active` (bool[5], the positions that act), `lam` (float32; `(N,)`,
        one per image, with `per_sample`), `perm` (int32[N]), `seed`
        (int32[2], for masks and boxes), and for a method with a switch its
        `switch_key` (bool, `(N,)` with `per_sample`), e.g. `use_cutmix`.
        """
        s_apply, s_pos, s_lam, s_perm, s_mix, s_lam0 = mixing.split_seed(seed, 6)
        spec = self.spec
        shape = [batch_size] if self.per_sample else ()
        prob = self.options[spec.prob_option] if spec.prob_option else 1.0
        apply = mixing.uniform([], s_apply) < prob
        active = ops.logical_and(self._positions(s_pos), apply)
        input_alpha = self._alpha(spec.input_alpha)
        plan = {}
        if spec.switch_key is not None:
            # A second input law, taken with probability `switch_option`.
            s_switch = mixing.derive_seed(seed, 6)
            switched = mixing.uniform(shape, s_switch) < self.options[spec.switch_option]
            other = mixing.beta(self._alpha(spec.switch_alpha), s_lam0, shape)
            lam = ops.where(switched, other, mixing.beta(input_alpha, s_lam, shape))
            plan[spec.switch_key] = switched
        elif spec.hidden_alpha is not None:
            # Input and hidden positions draw lam from different laws
            # (PatchUp: CutMix's Beta(1, 1) at l = 0, Beta(a, a) at l >= 1).
            hidden = mixing.beta(self._alpha(spec.hidden_alpha), s_lam, shape)
            lam = ops.where(active[0], mixing.beta(input_alpha, s_lam0, shape), hidden)
        else:
            lam = mixing.beta(input_alpha, s_lam, shape)
        perm = mixing.permutation(batch_size, s_perm, groups=groups)
        return {"apply": apply, "active": active, "lam": lam, "perm": perm, "seed": s_mix,
                **plan}

    # ---------------------------------------------------------------- mix
    def mix(self, position, result, plan):
        """Applies the method at `position` (assumed active) to `result`, a
        `MixResult` (`MixResult.clean(x, y)` for an unmixed batch)."""
        op = self.spec.input_op if position == 0 else self.spec.hidden_op
        seed = draws.fold_in(plan["seed"], position)
        return OPS[op](self, position, result, plan, seed)

    # --------------------------------------------------------------- loss
    def loss(self, logits, targets, result, plan, weighted=False):
        """The method's loss (float32 scalar, mean over the batch).

        With `weighted`, the last column of `targets` and of the result's
        targets is each sample's weight, mixed like the targets (`losses`
        then weigh `sum(w_i l_i) / N`).

        `"patchup"`: `a u L(y_a) + (1-u) L(y_b) + b L(y_mix)` on mixing
        steps (`(a, b) = loss_params`), `L(y)` on the others. `"pair"`
        (CutMix, Mixup/CutMix): `u L(y_a) + (1-u) L(y_b)`. `"mixed"`:
        `L(y_mix)` (`= L(y)` when unmixed). With `per_sample` the weights
        are each image's `u_i`, inside the batch mean: e.g.
        `mean_i(u_i L_i(y_a) + (1-u_i) L_i(y_b))`.
        """
        base = LOSS_FUNCTIONS[self.options["loss"]]

        def fn(logits, y):
            if not weighted:
                return base(logits, y)
            return base(logits, y[:, :-1], sample_weight=y[:, -1])

        y_a, y_b, y_mix, u = result.y_a, result.y_b, result.y_mix, result.u
        form = self.spec.loss_form
        if self.per_sample and form in ("patchup", "pair"):
            mixed = self._per_sample_loss(logits, result, weighted)
            # A step without mixing: L(y), exactly the plain step's loss.
            return ops.where(plan["apply"], mixed, fn(logits, targets))
        if form == "patchup":
            a, b = self.options["loss_params"]
            mixed = a * u * fn(logits, y_a) + (1.0 - u) * fn(logits, y_b) + b * fn(logits, y_mix)
            return ops.where(plan["apply"], mixed, fn(logits, targets))
        if form == "pair":
            return u * fn(logits, y_a) + (1.0 - u) * fn(logits, y_b)
        return fn(logits, y_mix)

    def _per_sample_loss(self, logits, result, weighted):
        """The loss of a mixing step with per-image weights `u_i`: the batch
        mean of each image's combination of its losses `L_i` (weighted
        `w_i L_i`)."""
        base = PER_SAMPLE_LOSSES[self.options["loss"]]

        def fn(y):
            if not weighted:
                return base(logits, y)
            return base(logits, y[:, :-1], sample_weight=y[:, -1])

        u = ops.broadcast_to(ops.cast(result.u, "float32"), ops.shape(logits)[:1])
        if self.spec.loss_form == "patchup":
            a, b = self.options["loss_params"]
            return ops.mean(
                a * u * fn(result.y_a) + (1.0 - u) * fn(result.y_b) + b * fn(result.y_mix))
        return ops.mean(u * fn(result.y_a) + (1.0 - u) * fn(result.y_b))
