"""TensorFlow's start-up lines, filtered as `TF_CPP_MIN_LOG_LEVEL` asks.

TensorFlow 2.21 prints its C++ start-up lines (the oneDNN and CPU-feature
banners, "All log messages before absl::InitializeLog() ...") before its
logging reads `TF_CPP_MIN_LOG_LEVEL`, so the variable does not silence
them. `import_tensorflow()` imports TensorFlow with the process's standard
error captured and writes back only the lines of the levels the variable
keeps (0 all, 1 no INFO, 2 no WARNING, 3 no ERROR).

TensorFlow and the trainer's other packages are the `train` extra, not the
library's requirements: `require_trainer()` (called by `import_tensorflow`)
stops a program that lacks one with an `error:` line and the `pip install`
line that adds it.
"""

import importlib.util
import os
import sys
import tempfile

# The `train` extra of setup.py: (import name, requirement) of each package.
TRAINER_PACKAGES = (
    ("tensorflow", "tensorflow>=2.16"),
    ("tensorflow_datasets", "tensorflow-datasets"),
    ("scipy", "scipy"),
    ("sklearn", "scikit-learn"),
    ("matplotlib", "matplotlib"),
)
INSTALL_TRAINER = 'pip install -e ".[train]"'

_LEVEL_OF_PREFIX = {"I": 0, "W": 1, "E": 2}


def _level(line):
    """The line's level (0 INFO .. 2 ERROR), or None if it is no log line."""
    if line[:1] in _LEVEL_OF_PREFIX and line[1:5].isdigit():
        return _LEVEL_OF_PREFIX[line[0]]
    if line.startswith("WARNING: All log messages before absl::InitializeLog()"):
        return 1
    if line.startswith("To enable the following instructions:"):
        return 0  # the second line of the CPU-feature INFO message
    return None


def _installed(module):
    """True if `module` can be imported (a None in sys.modules blocks it)."""
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_trainer_packages(modules=None):
    """The requirements of the `train` extra whose package is not installed
    (of those imported as `modules`, default all)."""
    return [req for module, req in TRAINER_PACKAGES
            if (modules is None or module in modules) and not _installed(module)]


def require_trainer(modules=None):
    """Stops the program (exit 2) if a package of the `train` extra is missing
    (of those imported as `modules`, default all)."""
    missing = missing_trainer_packages(modules)
    if missing:
        from patchup_tf.app.cli import fail

        names = ", ".join(req.split(">")[0] for req in missing)
        wanted = " ".join(f'"{req}"' if ">" in req else req for req in missing)
        fail(f"{names} not installed (the trainer and its programs need "
             f"{'it' if len(missing) == 1 else 'them'}): pip install {wanted}, or all the "
             f"trainer's packages: {INSTALL_TRAINER} in the patchup_tf folder")


def import_tensorflow():
    """Imports TensorFlow (once), dropping the start-up lines below the level;
    first stops the program if the trainer's packages are not all installed."""
    require_trainer()
    if "tensorflow" in sys.modules:
        return
    try:
        wanted = int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") or 0)
    except ValueError:
        wanted = 0
    if wanted <= 0:
        import tensorflow  # noqa: F401
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                level = _level(line)
                if level is None or level >= wanted:
                    sys.stderr.write(line)
            sys.stderr.flush()
