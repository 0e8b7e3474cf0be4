"""Per-method behaviour is a property of the method table, nowhere else.

`patchup_tf.rules` (the table) and `patchup_tf.methods` (its ops) name the
methods; every other module asks the table (`MethodSpec.patchup_mode`,
`reference_train`, `sizes_blocks`, `name_fields()`, `DEFAULT_METHOD`...)
instead of testing a method's name. Adding a method is then one table entry.
"""

import ast
import os

from patchup_tf.rules import METHODS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCANNED = ("patchup_tf", "scripts")
TABLE_MODULES = ("patchup_tf/rules.py", "patchup_tf/methods.py")


def names_a_method(text):
    return text in METHODS or text.endswith("_patchup")


def allowed_strings(tree):
    """String nodes that only document or default: docstrings, `help=` texts
    and parameter defaults (an API's documented default method)."""
    allowed = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                allowed.add(id(body[0].value))
        if isinstance(node, ast.keyword) and node.arg == "help":
            allowed.update(id(n) for n in ast.walk(node.value))
        if isinstance(node, ast.arguments):
            for default in (*node.defaults, *node.kw_defaults):
                if default is not None:
                    allowed.add(id(default))
    return allowed


def method_names(tree):
    """The string nodes of `tree` that name a method, outside `allowed_strings`."""
    allowed = allowed_strings(tree)
    return [node for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in allowed and names_a_method(node.value)]


def method_names_in(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    return [f"{path}:{node.lineno}: {node.value!r}" for node in method_names(tree)]


def python_files():
    for top in SCANNED:
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            for name in sorted(files):
                path = os.path.relpath(os.path.join(folder, name), ROOT).replace(os.sep, "/")
                if name.endswith(".py") and path not in TABLE_MODULES:
                    yield path


def test_no_module_outside_the_table_tests_a_method_name():
    found = [hit for path in python_files() for hit in method_names_in(path)]
    assert not found, "method names outside the method table:\n" + "\n".join(found)


def test_the_scan_sees_a_method_test():
    tree = ast.parse('def f(m="vanilla"):\n    """soft_patchup"""\n    '
                     'return m.endswith("_patchup") or m == "cutmix"\n')
    assert sorted(node.value for node in method_names(tree)) == ["_patchup", "cutmix"]
