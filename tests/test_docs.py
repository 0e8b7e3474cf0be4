"""Every name the documentation gives exists.

README.md and docs/*.md name modules and objects (`patchup_tf.training.MixingModel`),
command-line flags (`--patchup_block`, `patchup-sweep --parallel N`) and files
of this repository (`docs/methods.md`, `tests/test_own_model.py::test_...`).
These tests check each against the code: a dotted name is imported and
looked up, a flag is looked up in the parser of the program that the text
gives it to, and a path must be a file or folder that git tracks. The
trainer's flag table in docs/training.md must list exactly the flags of
`python scripts/train.py --help`, each once.

Which program a flag belongs to: in a command (a fenced code line or a
backticked span), the program named before it (`scripts/train.py`,
`patchup-sweep`, `python -m benchmarks`, ...); a span that starts with the
flag belongs to the trainer in README.md and docs/training.md, and to any of
the programs elsewhere (where a bare `--xla_...` is XLA's own option, not
checked).
"""

import argparse
import contextlib
import fnmatch
import functools
import importlib
import io
import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md"] + sorted(
    os.path.join("docs", f) for f in os.listdir(os.path.join(ROOT, "docs")) if f.endswith(".md"))
# Docs whose bare `--flag` spans are the trainer's.
TRAINER_DOCS = ("README.md", os.path.join("docs", "training.md"))

FENCE = re.compile(r"^(`{3,}|~{3,})[^\n]*\n(.*?)^\1[ \t]*$", re.S | re.M)
SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
DOTTED = re.compile(r"(?<![\w./-])patchup_tf(?:\.[A-Za-z_]\w*)+")
FROM_IMPORT = re.compile(
    r"^\s*from\s+(patchup_tf(?:\.\w+)*)\s+import\s+\(?([\w\s,]+?)\)?\s*(?:#.*)?$", re.M)
FLAG = re.compile(r"(?<![\w-])--[A-Za-z][\w-]*")
PATH_TOKEN = re.compile(r"^[\w.\-*]+(?:/[\w.\-*]*)*(?:::[\w:\[\]-]+)?$")
# The end of one shell command inside a line.
COMMAND_BREAK = re.compile(r"&&|\|\||[;|]|\$\(|\bdo\b|\bthen\b")


# ----------------------------------------------------------------- reading the docs
def read(doc):
    with open(os.path.join(ROOT, doc), encoding="utf-8") as f:
        return f.read()


def split_markdown(text):
    """(the fenced code blocks' contents, the text outside them)."""
    blocks = [m.group(2) for m in FENCE.finditer(text)]
    return blocks, FENCE.sub("\n", text)


def spans(prose):
    """The inline code spans of `prose` (text outside fenced blocks)."""
    return [m.group(2).strip() for m in SPAN.finditer(prose)]


def command_lines(block):
    """The lines of a fenced block with backslash continuations joined."""
    return re.sub(r"\\\n", " ", block).splitlines()


# ----------------------------------------------------------------- dotted names
def dotted_names(text):
    """Every `patchup_tf.x.y` named in backticks or in a code block, and every
    name a code block imports from patchup_tf."""
    blocks, prose = split_markdown(text)
    names = set()
    for span in spans(prose):
        names.update(DOTTED.findall(span))
    for block in blocks:
        names.update(DOTTED.findall(block))
        for module, imported in FROM_IMPORT.findall(block):
            for item in imported.split(","):
                item = item.split(" as ")[0].strip()
                if item:
                    names.add(f"{module}.{item}")
    return names


def resolves(name):
    """Whether `name` is an importable module or an attribute path under one."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name is not None and not module_name.startswith(e.name + ".") \
                    and e.name != module_name:
                raise  # a dependency of the module is missing: not the docs' fault
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


# ----------------------------------------------------------------- paths
@functools.lru_cache(maxsize=None)
def tracked_files():
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                             check=True).stdout.decode()
        files = [f for f in out.split("\0") if f]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: what is on disk
        files = []
        for folder, dirs, names in os.walk(ROOT):
            dirs[:] = [d for d in dirs if d not in (".git", "__pycache__")]
            files += [os.path.relpath(os.path.join(folder, n), ROOT) for n in names]
    return tuple(f.replace(os.sep, "/") for f in files)


def path_exists(path):
    """Whether `path` (relative to the root, `/`-separated, globs allowed) is a
    tracked file or a folder holding one."""
    path = os.path.normpath(path).replace(os.sep, "/").rstrip("/")
    for f in tracked_files():
        if fnmatch.fnmatchcase(f, path) or fnmatch.fnmatchcase(f, path + "/*"):
            return True
    return False


def top_entries(folder):
    return {f[len(folder):].split("/")[0] for f in tracked_files()
            if folder == "" or f.startswith(folder)}


def names_exist(path):
    """`tests/x.py::test_name` (or `::Class::test_name`): the file and each name in it."""
    file, _, names = path.partition("::")
    if not path_exists(file):
        return False
    if not names:
        return True
    source = read(file)
    for name in names.split("::"):
        name = name.split("[")[0]
        if not re.search(rf"^\s*(?:async\s+)?(?:def|class)\s+{re.escape(name)}\b", source, re.M):
            return False
    return True


def repository_paths(doc, text):
    """(path as written, path from the root) for every link target inside the
    repository and every backticked token that names a tracked top-level entry
    (`docs/...`, `tests/...`, `setup.py`) or, in docs/, an entry of docs/."""
    here = os.path.dirname(doc)
    found = []
    blocks, prose = split_markdown(text)
    for target in LINK.findall(prose):
        if re.match(r"^[a-z][a-z+.-]*:", target) or target.startswith("#"):
            continue  # a URL or an anchor on this page
        target = target.split("#")[0]
        found.append((target, os.path.join(here, target)))
    roots = top_entries("")
    local = top_entries(here + "/") if here else set()
    for span in spans(prose):
        for token in span.split():
            token = token.strip(",;:()[]'\"")
            if (not token or "<" in token or "..." in token or token.startswith(("-", "~"))
                    or not PATH_TOKEN.match(token)):
                continue
            first = token.split("/")[0].split("::")[0]
            if "/" not in token and "::" not in token and "." not in first:
                continue  # a plain word
            if first in roots:
                found.append((token, token))
            elif first in local:
                found.append((token, os.path.join(here, token)))
    return found


# ----------------------------------------------------------------- flags
def option_strings(parser):
    """Every option string of `parser` and of its subcommands' parsers."""
    found = set()
    for action in parser._actions:
        found.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= option_strings(sub)
    return found


def flags_from_help(main):
    """The flags a program's `--help` prints, for a program whose parser is
    built inside its main."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main(["--help"])
    return set(FLAG.findall(out.getvalue())) | {"--help"}


def _trainer():
    from patchup_tf.app.experiment import config

    return option_strings(config.build_parser())


def _sweep():
    from patchup_tf.app.tools import sweep

    own = set()
    for flag in ("--parallel", "--gpus", "--dry_run", "--shard", "--root_dir", "--help"):
        try:
            sweep.parse([flag])
        except sweep.SweepError as e:
            if "unknown flag" in str(e):
                continue
        own.add(flag)
    return _trainer() | own


def _parser_of(module, function="build_parser"):
    def flags():
        return option_strings(getattr(importlib.import_module(module), function)())
    return flags


def _precision():
    from patchup_tf.app import precision

    return flags_from_help(precision._main)


# A program as the docs call it: (how a command names it, its flags).
PROGRAMS = {
    "train": (("train.py", "patchup-train"), _trainer),
    "evaluate": (("evaluate.py", "patchup-evaluate"), _parser_of("patchup_tf.app.cli.evaluate")),
    "make_affine_sets": (("make_affine_sets.py", "make_affine_sets", "patchup-make-affine-sets"),
                         _parser_of("patchup_tf.app.cli.make_affine_sets")),
    "visualize": (("visualize.py", "patchup-visualize"), _parser_of("patchup_tf.app.cli.visualize")),
    "sweep": (("sweep.py", "patchup-sweep"), _sweep),
    "compare": (("compare.py", "patchup-compare"), _parser_of("patchup_tf.app.cli.compare")),
    "benchmarks": (("-m benchmarks", "-m benchmarks.run"), _parser_of("benchmarks.run")),
    "gpu_bench": (("-m benchmarks.gpu_bench",), _parser_of("benchmarks.gpu_bench", "_parser")),
    "determinism_cost": (("-m benchmarks.determinism_cost",),
                         _parser_of("benchmarks.determinism_cost", "_parser")),
    "precision": (("-m patchup_tf.app.precision",), _precision),
}


@functools.lru_cache(maxsize=None)
def program_flags(program):
    return frozenset(PROGRAMS[program][1]())


def all_flags():
    return frozenset().union(*(program_flags(p) for p in PROGRAMS))


def _program_at(words, i):
    """The program named by words[i] (with `-m` and the module joined), or None."""
    word = words[i]
    if word == "-m" and i + 1 < len(words):
        word = f"-m {words[i + 1]}"
    base = word.rsplit("/", 1)[-1] if not word.startswith("-m ") else word
    for program, (names, _) in PROGRAMS.items():
        if base in names:
            return program
    return None


def command_flags(line):
    """(program, flag) for every flag that follows a named program in `line`."""
    found = []
    for command in COMMAND_BREAK.split(line):
        words = command.split()
        program = None
        for i, word in enumerate(words):
            named = _program_at(words, i)
            if named:
                program = named
            elif program and FLAG.fullmatch(word.split("=")[0]):
                found.append((program, word.split("=")[0]))
    return found


def flag_uses(doc, text):
    """(program or None for any, flag, where) for every flag the doc gives."""
    blocks, prose = split_markdown(text)
    uses = []
    for block in blocks:
        for line in command_lines(block):
            uses += [(p, f, line.strip()) for p, f in command_flags(line)]
    bare_program = "train" if doc in TRAINER_DOCS else None
    for span in spans(prose):
        in_commands = command_flags(span)
        if in_commands:
            uses += [(p, f, span) for p, f in in_commands]
        elif span.startswith("--"):
            uses += [(bare_program, f, span) for f in FLAG.findall(span)]
    return uses


def unknown_flags(doc, text):
    bad = []
    for program, flag, where in flag_uses(doc, text):
        known = program_flags(program) if program else all_flags()
        if program is None and flag.startswith("--xla_"):
            continue  # an XLA option (set through XLA_FLAGS), not a program's flag
        if flag not in known:
            bad.append(f"{flag} ({program or 'any program'}: {where!r})")
    return sorted(set(bad))


# ----------------------------------------------------------------- the tests
@pytest.mark.parametrize("doc", DOCS)
def test_every_dotted_name_exists(doc):
    missing = sorted(n for n in dotted_names(read(doc)) if not resolves(n))
    assert not missing, f"{doc} names what does not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS)
def test_every_repository_path_exists(doc):
    missing = sorted({written for written, path in repository_paths(doc, read(doc))
                      if not names_exist(path)})
    assert not missing, f"{doc} names files the repository does not hold: {missing}"


@pytest.mark.parametrize("doc", DOCS)
def test_every_flag_exists(doc):
    bad = unknown_flags(doc, read(doc))
    assert not bad, f"{doc} gives flags its programs do not have: {bad}"


def trainer_table_flags():
    """The flags of the table under "## All flags" in docs/training.md, each
    as many times as it is listed."""
    text = read(os.path.join("docs", "training.md"))
    section = text.split("\n## All flags", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")][2:]
    listed = []
    for row in rows:
        for span in spans(row):
            listed += FLAG.findall(span)
    return listed


def test_the_trainer_flag_table_is_the_help():
    from patchup_tf.app.experiment import config

    parser = config.build_parser()
    shown = {s for a in parser._actions if a.help != argparse.SUPPRESS
             for s in a.option_strings if s.startswith("--") and s != "--help"}
    listed = trainer_table_flags()
    twice = sorted({f for f in listed if listed.count(f) > 1})
    assert not twice, f"listed more than once in the flag table: {twice}"
    assert set(listed) == shown, (f"missing from the table: {sorted(shown - set(listed))}; "
                                  f"not in --help: {sorted(set(listed) - shown)}")


def test_made_up_names_are_caught():
    doc = os.path.join("docs", "training.md")
    text = (
        "Use `patchup_tf.training.NoSuchModel` and `patchup_tf.no_such_module`, see\n"
        "[methods](no-such-page.md) and `tests/test_no_such_file.py`, and\n"
        "`tests/test_own_model.py::test_no_such_test`; pass `--no_such_flag 3`\n"
        "or `patchup-sweep --no_such_sweep_flag`.\n\n"
        "```bash\npython scripts/train.py --dataset digits \\\n  --no_such_continued_flag 1\n"
        "python scripts/evaluate.py RUN --method soft_patchup\n```\n\n"
        "```python\nfrom patchup_tf.layers import MixingPoint, NoSuchLayer\n```\n"
        "Real ones: `patchup_tf.training.MixingModel`, [api](api.md), `docs/methods.md`,\n"
        "`--patchup_block 7`, `patchup-sweep --parallel 2`, `python -m benchmarks --tiny`.\n"
    )
    assert {n for n in dotted_names(text) if not resolves(n)} == {
        "patchup_tf.training.NoSuchModel", "patchup_tf.no_such_module",
        "patchup_tf.layers.NoSuchLayer"}
    missing = {written for written, path in repository_paths(doc, text) if not names_exist(path)}
    assert missing == {"no-such-page.md", "tests/test_no_such_file.py",
                       "tests/test_own_model.py::test_no_such_test"}
    flags = {f.split(" ")[0] for f in unknown_flags(doc, text)}
    # evaluate has no --method: a trainer flag given to another program is caught too.
    assert flags == {"--no_such_flag", "--no_such_sweep_flag", "--no_such_continued_flag",
                     "--method"}
