"""Keras' own layer harness (`keras.src.testing.TestCase.run_layer_test`) on
every public layer: serialization round trip, build, symbolic and eager
calls, a compiled training step and the mixed-precision dtype check.

The harness is Keras' internal test tool, so it may change: the first test
fails, naming what is missing, if the method or a keyword used here is gone
(an import error fails the module the same way); nothing here skips.
"""

import inspect

import keras
import numpy as np
from keras.src import testing

from patchup_tf.layers import DropBlock, MixingPoint, PatchUp
from patchup_tf.models.batchnorm import FusedBatchNorm

KEYWORDS = (
    "init_kwargs", "input_shape", "input_data", "call_kwargs", "expected_output_shape",
    "expected_output_dtype", "expected_output", "expected_num_trainable_weights",
    "expected_num_non_trainable_weights", "expected_num_seed_generators", "supports_masking",
    "run_training_check", "run_mixed_precision_check", "assert_built_after_instantiation",
)


def _features(shape=(2, 8, 6, 3), seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


class KerasHarnessTest(testing.TestCase):
    def test_the_harness_is_there(self):
        run = getattr(testing.TestCase, "run_layer_test", None)
        self.assertIsNotNone(run, "keras.src.testing.TestCase.run_layer_test is gone: "
                                  "port these tests to Keras' new layer harness")
        missing = set(KEYWORDS) - set(inspect.signature(run).parameters)
        self.assertFalse(missing, f"run_layer_test lost the keywords {sorted(missing)}: "
                                  "port these tests to Keras' new layer harness")

    # ------------------------------------------------------------ DropBlock
    def test_dropblock_inference_is_the_identity(self):
        x = _features()
        self.run_layer_test(
            DropBlock, {"keep_prob": 0.8, "block_size": 3, "seed": 1},
            input_data=keras.ops.convert_to_tensor(x),
            expected_output=keras.ops.convert_to_tensor(x.copy()),
            expected_num_trainable_weights=0, expected_num_non_trainable_weights=0,
            expected_num_seed_generators=1, supports_masking=True,
        )

    def test_dropblock_training(self):
        self.run_layer_test(
            DropBlock, {"keep_prob": 0.8, "block_size": 3, "seed": 1},
            input_shape=(2, 8, 6, 3), call_kwargs={"training": True},
            expected_output_shape=(2, 8, 6, 3), expected_output_dtype="float32",
            expected_num_trainable_weights=0, expected_num_non_trainable_weights=0,
            expected_num_seed_generators=1, supports_masking=True,
        )

    # ----------------------------------------------------------- MixingPoint
    def test_mixing_point(self):
        # Built only when called: its `build` checks that the input is 4-D,
        # so `assert_built_after_instantiation` does not apply. Outside a
        # MixingModel step it is the identity, in training too.
        x = _features()
        for training in (False, True):
            self.run_layer_test(
                MixingPoint, {"position": 2}, input_data=keras.ops.convert_to_tensor(x),
                expected_output=keras.ops.convert_to_tensor(x.copy()),
                call_kwargs={"training": training},
                expected_num_trainable_weights=0, expected_num_non_trainable_weights=0,
                expected_num_seed_generators=0, supports_masking=True,
            )

    # --------------------------------------------------------------- PatchUp
    def _run_patchup(self, targets_shape, num_classes, training):
        self.run_layer_test(
            PatchUp, {"mode": "soft", "gamma": 0.5, "block_size": 3, "num_classes": num_classes,
                      "seed": 3},
            input_shape=[(4, 8, 6, 3), targets_shape],
            input_dtype=["float32", "float32" if len(targets_shape) == 2 else "int32"],
            call_kwargs={"training": training},
            # The targets and `u` are float32 whatever the policy (the losses
            # read them in float32); the features follow the compute dtype.
            expected_output_shape=((4, 8, 6, 3), (4, 5), (4, 5), (4, 5), ()),
            expected_output_dtype=("float32",) * 5,
            expected_num_trainable_weights=0, expected_num_non_trainable_weights=0,
            expected_num_seed_generators=1,
            # The harness fits a model on the layer's own outputs as targets,
            # and Keras' data adapters refuse one of them, the scalar `u`
            # ("the arrays must be at least rank 1"); the layer has no
            # weights to train anyway.
            run_training_check=False,
        )

    def test_patchup_one_hot_targets(self):
        for training in (False, True):
            self._run_patchup((4, 5), None, training)

    def test_patchup_integer_labels(self):
        for training in (False, True):
            self._run_patchup((4,), 5, training)

    # -------------------------------------------------------- FusedBatchNorm
    def test_fused_batchnorm(self):
        for training in (False, True):
            self.run_layer_test(
                FusedBatchNorm, {"momentum": 0.9, "epsilon": 1e-5},
                input_shape=(2, 4, 5, 3), call_kwargs={"training": training},
                expected_output_shape=(2, 4, 5, 3), expected_output_dtype="float32",
                expected_num_trainable_weights=2, expected_num_non_trainable_weights=2,
                expected_num_seed_generators=0, supports_masking=True,
            )

    def test_fused_batchnorm_in_float64(self):
        """float64 trains in float64: the output equals Keras' BatchNormalization
        to float64 round-off, the moving mean too, and the moving variance takes
        the unbiased batch variance (see patchup_tf.models.batchnorm)."""
        self.run_layer_test(
            FusedBatchNorm, {"dtype": "float64"}, input_shape=(2, 4, 5, 3),
            input_dtype="float64", call_kwargs={"training": True},
            expected_output_shape=(2, 4, 5, 3), expected_output_dtype="float64",
            expected_num_trainable_weights=2, expected_num_non_trainable_weights=2,
            # The harness's mixed-precision check builds the layer with
            # `dtype="mixed_float16"`, replacing this test's float64.
            run_mixed_precision_check=False,
        )
        x = _features((2, 4, 5, 3)).astype("float64")
        fused, plain = FusedBatchNorm(dtype="float64"), keras.layers.BatchNormalization(
            dtype="float64")
        np.testing.assert_allclose(fused(x, training=True), plain(x, training=True),
                                   rtol=1e-13, atol=1e-13)
        for a in fused.weights:
            self.assertEqual(a.dtype, "float64")
        n = x.size // x.shape[-1]
        mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
        np.testing.assert_allclose(fused.moving_mean.numpy(), 0.01 * mean, rtol=1e-13)
        np.testing.assert_allclose(fused.moving_variance.numpy(),
                                   0.99 + 0.01 * var * n / (n - 1), rtol=1e-13)
