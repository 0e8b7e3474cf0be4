"""Registers the package's Keras classes once Keras is loaded, without loading it.

`import patchup_tf` must not import Keras (under the TensorFlow backend that
is TensorFlow's 5-10 s start-up), yet `keras.models.load_model` must find
every class the package registers (`patchup>PatchUp`, `patchup>MixingModel`,
...) after a bare `import patchup_tf`. So the package watches imports:

* if Keras is already loaded, the classes are registered at once;
* otherwise, when Keras finishes loading, they are registered then; if that
  happens while one of this package's modules is itself being imported (its
  `import keras` line loaded Keras), the registration waits until the
  outermost such import has finished, so no module is read half-initialised.
"""

import importlib
import importlib.abc
import importlib.util
import sys

SERIALIZABLE_MODULES = (
    "patchup_tf.any_size",
    "patchup_tf.layers.dropblock",
    "patchup_tf.layers.mixing_point",
    "patchup_tf.layers.patchup",
    "patchup_tf.models.batchnorm",
    "patchup_tf.optimizer",
    "patchup_tf.training",
)
"""The modules whose import registers a Keras-serializable class."""


class _Watcher(importlib.abc.MetaPathFinder):
    """Wraps the loading of `keras` and of this package's modules."""

    def __init__(self):
        self.depth = 0  # how many patchup_tf modules are being executed now
        self.pending = False  # Keras loaded while depth > 0
        self.done = False

    def find_spec(self, fullname, path=None, target=None):
        if self.done or not (fullname == "keras" or fullname.startswith("patchup_tf.")):
            return None
        spec = self._spec_of_the_others(fullname, path, target)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        original = spec.loader.exec_module
        if fullname == "keras":
            def exec_module(module):
                original(module)
                self.keras_loaded()
        else:
            def exec_module(module):
                self.depth += 1
                try:
                    original(module)
                finally:
                    self.depth -= 1
                if self.depth == 0 and self.pending:
                    self.register()
        spec.loader.exec_module = exec_module
        return spec

    def _spec_of_the_others(self, fullname, path, target):
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                return spec
        return None

    def keras_loaded(self):
        if self.depth:
            self.pending = True
        else:
            self.register()

    def register(self):
        if self.done:
            return
        self.done = True
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        for name in SERIALIZABLE_MODULES:
            importlib.import_module(name)


def register_when_keras_loads(modules):
    """Registers now if `keras` is in `modules` (sys.modules), else on its load."""
    watcher = _Watcher()
    if "keras" in modules:
        watcher.register()
    else:
        sys.meta_path.insert(0, watcher)
