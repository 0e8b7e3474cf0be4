"""TensorFlow's start-up lines, filtered as `TF_CPP_MIN_LOG_LEVEL` asks.

TensorFlow 2.21 prints its C++ start-up lines (the oneDNN and CPU-feature
banners, "All log messages before absl::InitializeLog() ...") before its
logging reads `TF_CPP_MIN_LOG_LEVEL`, so the variable does not silence
them. `import_tensorflow()` imports TensorFlow with the process's standard
error captured and writes back only the lines of the levels the variable
keeps (0 all, 1 no INFO, 2 no WARNING, 3 no ERROR).
"""

import os
import sys
import tempfile

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


def import_tensorflow():
    """Imports TensorFlow (once), dropping the start-up lines below the level."""
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
