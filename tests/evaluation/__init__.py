"""Tests of patchup_tf.evaluation."""
