"""What an experiment folder holds, read without TensorFlow.

The resume point is `checkpoints/` (see `patchup_tf.app.experiment.checkpoints`);
its small index file says how many epochs are done, so the tools (`sweep`,
`compare`) and the trainer can tell a finished or resumable folder by
reading one file.
"""

import os
import re

CHECKPOINT_DIR = "checkpoints"
INDEX_FILE = os.path.join(CHECKPOINT_DIR, "checkpoint")  # exists once an epoch is done
LEGACY_STATE = "state.npz"  # the resume point of older versions
NAME = "epoch"
_INDEX_LINE = re.compile(r'^model_checkpoint_path:\s*"(?:.*/)?' + NAME + r'-(\d+)"\s*$', re.M)


def has_checkpoint(exp_dir):
    """Whether `exp_dir` holds a committed checkpoint (a completed epoch)."""
    return committed_epoch(exp_dir) is not None


def committed_epoch(exp_dir):
    """The number of epochs completed per `exp_dir`'s checkpoint index
    (its `epoch-N` name), or None before the first commit.

    Reads the small index file only: cheap enough to poll.
    """
    try:
        with open(os.path.join(exp_dir, INDEX_FILE)) as f:
            match = _INDEX_LINE.search(f.read())
    except OSError:
        return None
    return int(match.group(1)) if match else None
