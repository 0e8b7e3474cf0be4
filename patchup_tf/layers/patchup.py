"""A self-contained PatchUp layer for custom training loops."""

import keras
from keras import ops

from patchup_tf import mixing
from patchup_tf.rules import (
    check_alpha,
    check_block,
    check_patchup_mode,
    check_prob,
    check_seed,
    invalid,
    is_int,
    patchup_block_size,
)


@keras.saving.register_keras_serializable(package="patchup")
class PatchUp(keras.layers.Layer):
    """Soft or hard PatchUp on `[features, targets]`, drawing its own randomness.

    Each training call draws `lam ~ Beta(alpha, alpha)`, a permutation and
    one `(H, W, C)` block mask (`mixing.patchup`), and returns
    `(features, y_a, y_b, y_mix, u)`; the loss is then
    `u L(y_a) + (1 - u) L(y_b) + L(y_mix)`. At inference it returns
    `(features, targets, targets, targets, 1.0)` unchanged. Inside a
    `MixingModel` use `MixingPoint` instead: the model decides per batch
    where to mix.

    Args:
        mode: `"soft"` (default) or `"hard"`.
        gamma: float in (0, 1], default 0.75, the share of features to alter
            before the block adjustment.
        block_size: positive odd int, default 7 (`None`: 7), the block on
            32-wide maps; smaller maps take the method's rule (at most 5 on
            16-wide, at most 3 on 8-wide and smaller; `docs/methods.md`).
        alpha: float > 0, default 2.0, for `lam ~ Beta(alpha, alpha)`.
        num_classes: int, needed only for integer labels.
        seed: optional int.

    Call arguments:
        inputs: `[features (N, H, W, C), targets]`, targets one-hot or soft
            `(N, K)`, or integer labels `(N,)` with `num_classes` set.
        training: Python bool.
    """

    def __init__(self, mode="soft", gamma=0.75, block_size=7, alpha=2.0, num_classes=None,
                 seed=None, **kwargs):
        super().__init__(**kwargs)
        self.mode = check_patchup_mode(mode)
        self.gamma = check_prob("gamma", gamma)
        self.block_size = 7 if block_size is None else check_block(block_size)
        self.alpha = check_alpha(alpha, positive=True)
        if num_classes is not None and not (is_int(num_classes) and num_classes >= 1):
            raise invalid("num_classes", "an int >= 1 (or None)", num_classes)
        self.num_classes = num_classes
        self.seed = check_seed(seed)
        self.seed_generator = keras.random.SeedGenerator(self.seed)

    def _num_classes(self, targets_shape):
        """K, the width of the targets the layer returns."""
        if len(targets_shape) == 1:
            if self.num_classes is None:
                raise invalid("num_classes", "an int: integer labels (N,) need the number of "
                              "classes (or pass one-hot targets (N, K))", None)
            return self.num_classes
        return targets_shape[-1]

    def _targets(self, targets):
        """float32 targets `(N, K)` (integer labels one-hot encoded)."""
        targets = ops.convert_to_tensor(targets)
        k = self._num_classes(targets.shape)
        if len(targets.shape) == 1:
            return ops.one_hot(ops.cast(targets, "int32"), k, dtype="float32")
        return ops.cast(targets, "float32")

    def call(self, inputs, training=False):
        features, targets = inputs
        targets = self._targets(targets)
        if not training:
            return features, targets, targets, targets, ops.convert_to_tensor(1.0, "float32")
        s_lam, s_perm, s_mask = mixing.split_seed(self.seed_generator.next(), 3)
        # the smaller side, as `Method.mix`: a non-square map gets a block it can hold
        features = mixing.check_features(features)
        height, width = mixing.static_hw(features)
        block = patchup_block_size(min(height, width), self.block_size)
        result = mixing.patchup(
            features, targets, mode=self.mode, gamma=self.gamma, block_size=block,
            lam=mixing.beta(self.alpha, s_lam),
            perm=mixing.permutation(ops.shape(features)[0], s_perm), seed=s_mask,
        )
        return result[:5]

    def compute_output_shape(self, input_shape):
        f, t = input_shape
        t = (t[0], self._num_classes(t))
        return tuple(f), t, t, t, ()

    def compute_output_spec(self, inputs, training=False):
        """The features keep their dtype; targets and `u` are float32."""
        features, targets = inputs
        f, t, _, _, u = self.compute_output_shape((features.shape, targets.shape))
        return (
            keras.KerasTensor(f, dtype=features.dtype),
            *(keras.KerasTensor(t, dtype="float32") for _ in range(3)),
            keras.KerasTensor(u, dtype="float32"),
        )

    def get_config(self):
        return {
            **super().get_config(),
            "mode": self.mode, "gamma": self.gamma, "block_size": self.block_size,
            "alpha": self.alpha, "num_classes": self.num_classes, "seed": self.seed,
        }
