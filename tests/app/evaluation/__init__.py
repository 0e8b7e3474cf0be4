"""Tests of patchup_tf.app.evaluation."""
