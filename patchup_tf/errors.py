"""The two ways a run can fail that are the user's to fix.

The library and the trainer raise these; the command-line programs
(`patchup_tf.app.cli`) turn them into one `error: ...` line and an exit code.
"""


class UsageError(ValueError):
    """A flag, file or folder that cannot be used; the message names the bad
    value and what to do instead."""


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN or infinite loss and was stopped."""
