"""`patchup_tf.app.folder`: the experiment folder's names, paths, reads and writes.

Also: no other module spells one of the folder's file names in code, so a
renamed file is renamed in one place.
"""

import ast
import json
import os
import re
import subprocess
import sys

import pytest

from patchup_tf.app import folder
from patchup_tf.files import TMP_PREFIX, write_json

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OWNER = os.path.join(REPO, "patchup_tf", "app", "folder.py")
SCANNED = ("patchup_tf", "scripts")

# Every file name the module defines; NAME ("epoch", the checkpoints' prefix)
# is an ordinary word and left out.
NAMES = {key: value for key, value in vars(folder).items()
         if key.isupper() and isinstance(value, str) and key != "NAME"}
# Names without a dot are words too ("saved_model" is also a kind of model,
# "checkpoint" a flag): they count only where a path is joined or compared.
WORDS = {value for value in NAMES.values() if "." not in value}
FILES = {value for value in NAMES.values() if "." in value}
_FILE_IN_TEXT = re.compile("|".join(r"(?<!\w)" + re.escape(name) + r"(?!\w)"
                                    for name in sorted(FILES, key=len, reverse=True)))


# ------------------------------------------------------------- the names
_HAS_DOCSTRING = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _docstrings(tree):
    """The ids of the docstring nodes of `tree`."""
    firsts = [node.body[0] for node in ast.walk(tree)
              if isinstance(node, _HAS_DOCSTRING) and node.body]
    return {id(first.value) for first in firsts
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)}


def _path_words(tree):
    """The string constants joined into a path (`os.path.join`) or compared."""
    nodes = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and ast.unparse(node.func) in ("os.path.join", "join"):
            nodes += node.args
        elif isinstance(node, ast.Compare):
            nodes += [node.left, *node.comparators]
    found = set()
    for node in nodes:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                found.add(id(sub))
    return sorted(found)


def spelled_names(source):
    """`[(line, text)]`: the string constants of `source` (docstrings aside)
    that spell a file name of the experiment folder."""
    tree = ast.parse(source)
    docstrings, path_words = _docstrings(tree), _path_words(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Constant) or not isinstance(node.value, str) or \
                id(node) in docstrings:
            continue
        word = node.value.rstrip("/")
        if _FILE_IN_TEXT.search(node.value) or (word in WORDS and id(node) in path_words):
            found.append((node.lineno, node.value))
    return sorted(found)


def _sources():
    for top in SCANNED:
        for root, _, files in os.walk(os.path.join(REPO, top)):
            for name in sorted(files):
                path = os.path.join(root, name)
                if name.endswith(".py") and path != OWNER:
                    yield path


def test_no_module_but_the_owner_spells_a_file_name_of_the_folder():
    spelled = []
    for path in _sources():
        with open(path, encoding="utf-8") as f:
            for line, text in spelled_names(f.read()):
                spelled.append(f"{os.path.relpath(path, REPO)}:{line}: {text!r}")
    assert not spelled, ("experiment folder file names spelled outside "
                         "patchup_tf/app/folder.py (use its constants):\n" + "\n".join(spelled))


def test_the_check_finds_names_in_code_but_not_in_docstrings():
    source = '''
"""Reads flags.json and checkpoints/."""
import os

def f(exp_dir, kind):
    """Writes report.json."""
    os.path.join(exp_dir, "checkpoints")
    print(f"see {exp_dir}/flags.json")
    if kind == "saved_model":
        return "x.evaluation.json"
    return ("saved_model", "checkpoint", "my_report.json", "catalog.json")
'''
    assert [line for line, _ in spelled_names(source)] == [7, 8, 9, 10]


def test_the_folder_module_imports_neither_tensorflow_nor_keras():
    proc = subprocess.run(
        [sys.executable, "-c", "import sys\nimport patchup_tf.app.folder\n"
         "print(sorted(m for m in ('tensorflow', 'keras', 'jax', 'torch') if m in sys.modules))"],
        capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


# ------------------------------------------------------- paths and tests
def test_paths(tmp_path):
    exp = str(tmp_path)
    assert folder.flags_path(exp) == os.path.join(exp, "flags.json")
    assert folder.report_path(exp) == os.path.join(exp, "report.json")
    assert folder.log_path(exp) == os.path.join(exp, "log.json")
    assert folder.best_model_path(exp) == os.path.join(exp, "best.keras")
    assert folder.saved_model_path(exp) == os.path.join(exp, "saved_model")
    assert folder.checkpoint_dir(exp) == os.path.join(exp, "checkpoints")
    assert folder.tensorboard_path(exp) == os.path.join(exp, "tensorboard")
    assert folder.tensorboard_path(exp, "test") == os.path.join(exp, "tensorboard", "test")
    assert folder.curve_paths(exp) == [os.path.join(exp, "loss.png"),
                                       os.path.join(exp, "accuracy.png")]


def test_is_experiment_and_is_saved_model(tmp_path):
    assert not folder.is_experiment(tmp_path)
    assert not folder.is_experiment(tmp_path / "missing")
    (tmp_path / "flags.json").mkdir()  # a folder of that name is no flags file
    assert not folder.is_experiment(tmp_path)
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "flags.json").write_text("{}")
    assert folder.is_experiment(exp) and folder.is_experiment(str(exp))
    assert not folder.is_saved_model(exp)
    (exp / "saved_model").mkdir()
    (exp / "saved_model" / "saved_model.pb").write_bytes(b"")
    assert folder.is_saved_model(folder.saved_model_path(str(exp)))


def test_evaluation_path(tmp_path):
    exp = tmp_path / "exp"
    exp.mkdir()
    assert folder.evaluation_path(str(exp)) == str(exp) + ".evaluation.json"  # no flags yet
    (exp / "flags.json").write_text("{}")
    assert folder.evaluation_path(str(exp) + os.sep) == os.path.join(str(exp), "evaluation.json")
    model = os.path.join(str(tmp_path), "m.keras")
    assert folder.evaluation_path(model) == os.path.join(str(tmp_path), "m.evaluation.json")
    saved = os.path.join(str(tmp_path), "exported")
    assert folder.evaluation_path(saved) == saved + ".evaluation.json"


# ------------------------------------------------------ reads and writes
@pytest.mark.parametrize("write, read, name", [
    (folder.write_flags, folder.read_flags, "flags.json"),
    (folder.write_report, folder.read_report, "report.json"),
])
def test_a_written_file_reads_back_as_write_json_writes_it(tmp_path, write, read, name):
    data = {"b": [1, 2.5], "a": {"c": None}, "t": (1, 2)}
    write(str(tmp_path), data)
    assert read(str(tmp_path)) == {"b": [1, 2.5], "a": {"c": None}, "t": [1, 2]}
    write_json(str(tmp_path / "expected.json"), data)
    assert (tmp_path / name).read_bytes() == (tmp_path / "expected.json").read_bytes()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(TMP_PREFIX)]


def test_a_write_replaces_the_file_whole(tmp_path):
    folder.write_flags(str(tmp_path), {"precision": "float32", "long": "x" * 1000})
    folder.write_flags(str(tmp_path), {"precision": "bfloat16"})
    assert folder.read_flags(str(tmp_path)) == {"precision": "bfloat16"}


def test_read_log(tmp_path):
    (tmp_path / "log.json").write_text(json.dumps([{"epoch": 1}]))
    assert folder.read_log(str(tmp_path)) == [{"epoch": 1}]


@pytest.mark.parametrize("read", [folder.read_flags, folder.read_report, folder.read_log])
def test_the_readers_raise_what_open_and_json_raise(tmp_path, read):
    with pytest.raises(FileNotFoundError):
        read(str(tmp_path))
    for name in ("flags.json", "report.json", "log.json"):
        (tmp_path / name).write_text("{not json")
    with pytest.raises(ValueError):
        read(str(tmp_path))


# ------------------------------------------------------------ checkpoints
def test_committed_epoch_reads_the_index(tmp_path):
    exp = str(tmp_path)
    assert folder.committed_epoch(exp) is None and not folder.has_checkpoint(exp)
    os.makedirs(folder.checkpoint_dir(exp))
    index = os.path.join(exp, folder.INDEX_FILE)
    with open(index, "w") as f:
        f.write('model_checkpoint_path: "epoch-3"\nall_model_checkpoint_paths: "epoch-3"\n')
    assert folder.committed_epoch(exp) == 3 and folder.has_checkpoint(exp)
    with open(index, "w") as f:
        f.write('model_checkpoint_path: "/elsewhere/checkpoints/epoch-12"\n')
    assert folder.committed_epoch(exp) == 12
    with open(index, "w") as f:
        f.write('model_checkpoint_path: "other-3"\n')
    assert folder.committed_epoch(exp) is None
