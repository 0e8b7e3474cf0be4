"""The command-line programs: every console script's `main`, its exit codes.

Each program module has `main(argv=None) -> int`, wrapped by `program`;
`setup.py` installs them as console scripts (`patchup-train`, ...) and
`scripts/<name>.py` call the same `main`, so both print the same thing.
A program parses and checks its flags before it imports TensorFlow, so a
bad command line is answered at once. `program` first sets the process's
TensorFlow defaults (`process_settings`: oneDNN CPU kernels on, quiet
start-up logs), keeping whatever the user set.

Exit codes: 0 done; 1 failed (a sweep run, no experiment to compare);
2 bad flags, data or files (one `error: ...` line, nothing half-written);
3 a non-finite training loss (the last good checkpoint is kept);
130 interrupted.
"""

import functools
import os
import sys

from patchup_tf.errors import NonFiniteLoss, UsageError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_NAN = 3
EXIT_INTERRUPTED = 130
# What every program sets in its environment unless the user did (`process_settings`).
PROCESS_DEFAULTS = {"TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": "1"}


def fail(message):
    """Stops the program with `error: message` and exit 2 (see `program`)."""
    raise UsageError(message)


def process_settings(environ=None):
    """Sets the programs' TensorFlow defaults in `environ` (default `os.environ`).

    `TF_CPP_MIN_LOG_LEVEL=2` (`patchup_tf.app.cli.tf_logging` applies it to the
    start-up lines too) and `TF_ENABLE_ONEDNN_OPTS=1`: TensorFlow turns its
    oneDNN CPU kernels on by itself only on CPUs with AVX-512 VNNI/BF16 or
    AMX; without them a PreActResNet18 step on a 2-core AVX2 CPU took 1.65x
    the CPU time (docs/speed.md).
    A variable the user set is kept. Takes effect only before TensorFlow is
    imported in the process that reads `environ`.
    """
    environ = os.environ if environ is None else environ
    for key, value in PROCESS_DEFAULTS.items():
        environ.setdefault(key, value)
    return environ


def program(main):
    """Wraps a program's `main(argv)`: `process_settings`, the exit codes."""

    @functools.wraps(main)
    def run(argv=None):
        process_settings()  # before TensorFlow loads
        argv = sys.argv[1:] if argv is None else list(argv)
        try:
            return main(argv)
        except UsageError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except NonFiniteLoss as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_NAN

    return run
