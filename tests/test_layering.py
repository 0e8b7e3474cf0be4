"""The package's import graph: modules import only from below, and never in a circle.

The layers, bottom first (DESIGN of the package: the library, its trainer
application, the programs and tools on top). Every `import` counts, also
those inside functions.
"""

import ast
import os

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "patchup_tf")

LAYERS = (
    ("patchup_tf", "patchup_tf._registration", "patchup_tf.rules", "patchup_tf.errors",
     "patchup_tf.files"),
    ("patchup_tf.backend",),
    ("patchup_tf.draws", "patchup_tf.mixing", "patchup_tf.losses"),
    ("patchup_tf.methods",),
    ("patchup_tf.layers",),
    ("patchup_tf.heads", "patchup_tf.optimizer", "patchup_tf.training", "patchup_tf.any_size"),
    ("patchup_tf.models", "patchup_tf.attachment"),
    # the application, above the whole library
    ("patchup_tf.app", "patchup_tf.app.constants", "patchup_tf.app.folder",
     "patchup_tf.app.steptimer"),
    ("patchup_tf.app.data", "patchup_tf.app.evaluation", "patchup_tf.app.precision",
     "patchup_tf.app.plots", "patchup_tf.app.visualize"),
    ("patchup_tf.app.experiment",),
    ("patchup_tf.app.tools", "patchup_tf.app.cli"),
)


def rank(module):
    """The layer of `module`: that of the longest listed prefix."""
    best = None
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and (
                    best is None or len(name) > len(best[1])):
                best = (i, name)
    assert best is not None, f"{module} is in no layer of tests/test_layering.py; add it"
    return best[0]


def modules():
    """`{module name: set of patchup_tf modules it imports}`."""
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for file in files:
            if not file.endswith(".py"):
                continue
            path = os.path.join(folder, file)
            parts = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].split(os.sep)
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            with open(path) as f:
                tree = ast.parse(f.read())
            imported = set()
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    imported |= {a.name for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    imported.add(node.module)
                    imported |= {f"{node.module}.{a.name}" for a in node.names}
            found[name] = {m for m in imported if m.split(".")[0] == "patchup_tf"}
    return found


def test_every_module_imports_only_from_its_layer_or_below():
    graph = modules()
    upward = [f"{name} -> {other}" for name, imports in sorted(graph.items())
              for other in sorted(imports) if other in graph and rank(other) > rank(name)]
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)


def test_no_import_circle():
    graph = modules()
    edges = {name: {m for m in imports if m in graph and m != name and
                    not name.startswith(m + ".")}  # a package's own __init__ is no circle
             for name, imports in graph.items()}
    state, stack, circles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                circles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not circles, "import circles:\n" + "\n".join(circles)
