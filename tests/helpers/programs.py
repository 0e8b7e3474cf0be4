"""Runs a program's `main(argv)` (`patchup_tf.app.cli.*`) inside the test process.

A subprocess pays TensorFlow's start-up (seconds) per run; the program's
contract (exit code, what it prints, the files it writes) is the same
in-process: `main` returns the exit code, or argparse's `SystemExit` gives
it. The process-wide settings a program changes (TensorFlow's op
determinism, the Keras dtype policy) are put back afterwards.
"""

import contextlib
import io
import time
import types


def run_main(main, argv):
    """`main(argv)` with stdout and stderr captured; returns a namespace
    like `subprocess.CompletedProcess` (`returncode`, `stdout`, `stderr`,
    plus `seconds`). An exception other than `SystemExit` propagates (the
    program would have shown a traceback)."""
    import keras
    from tensorflow.python.framework import config as tf_config

    determinism = tf_config.is_op_determinism_enabled()
    policy = keras.mixed_precision.global_policy().name
    out, err = io.StringIO(), io.StringIO()
    start = time.monotonic()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in argv])
            except SystemExit as e:  # argparse's usage errors and --help
                code = 0 if e.code is None else e.code
    finally:
        keras.mixed_precision.set_global_policy(policy)
        if tf_config.is_op_determinism_enabled() != determinism:
            (tf_config.enable_op_determinism if determinism
             else tf_config.disable_op_determinism)()
    return types.SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue(),
                                 seconds=time.monotonic() - start)
