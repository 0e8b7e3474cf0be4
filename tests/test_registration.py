"""`patchup_tf._registration`: every Keras class is registered once Keras loads,
whichever module (or the bare package) was imported first."""

import subprocess
import sys

import pytest

from tests.helpers.trainer import REPO

EXPECTED = ["patchup>AnySizeMixingModel", "patchup>DropBlock", "patchup>FusedBatchNorm",
            "patchup>MixingModel", "patchup>MixingPoint", "patchup>PatchUp", "patchup>TorchSGD"]


@pytest.mark.parametrize("first", [
    "patchup_tf",  # Keras loads after the package: the import watcher registers
    "patchup_tf.optimizer",  # a registering module whose own `import keras` loads Keras
])
def test_every_class_is_registered_whatever_is_imported_first(first):
    code = (f"import {first}\n"
            "import keras\n"
            "from keras.src.saving import object_registration\n"
            "print(sorted(k for k in object_registration.GLOBAL_CUSTOM_OBJECTS "
            "if k.startswith('patchup>')))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == repr(EXPECTED)
