"""Run a grid of `scripts/train.py` experiments: every flag may take several values.

    python scripts/sweep.py --root_dir runs/ --dataset digits --arch wrn28_2 \\
        --method vanilla mixup soft_patchup hard_patchup --seed 0 1 2 --epochs 15

runs the cartesian product of the values (here 4 methods x 3 seeds = 12
runs; the last flag varies fastest). Each run is an ordinary training
process writing its ordinary experiment folder under `--root_dir`, so the
sweep keeps no state of its own:

* a finished run (its folder holds `report.json` and `saved_model/`, made
  with the same flags) is skipped;
* an interrupted run is started again with the same command, which resumes
  it from its last completed epoch;
* a failed run is reported and the others go on (exit status 1 at the end).

Every command is checked with the trainer's own parser and flag rules before
anything runs; a bad flag exits 2 with one message. So are two runs that
would share a folder: a flag the folder name leaves out (`--labels_per_class`,
`--schedule`, ...) cannot take several values in one sweep; run one sweep per
value, each with its own `--add_name` or `--root_dir`. A finished run is run
again (the trainer only adds the missing evaluation) when `--fsgm_attack` or
`--affine_test` now asks for results its report lacks.

Exit status: 0 every run finished, 1 a run failed, 2 bad flags, 130 stopped
(SIGINT/SIGTERM: the running children are stopped; the same command goes on).

Sweep options (everything else is a trainer flag with one or more values):

* `--root_dir DIR`: passed to every run; the children's output goes to
  `DIR/sweep_logs/<experiment folder name>.log`;
* `--parallel N`: N runs at once; on CPUs each gets `cores // N` threads
  (TF_NUM_INTRAOP_THREADS, TF_NUM_INTEROP_THREADS, OMP_NUM_THREADS);
* `--gpus 0,1,...`: one run per GPU at a time (CUDA_VISIBLE_DEVICES); with
  `--parallel N` too, N runs spread over the GPUs;
* `--shard i/n`: only runs i, i+n, i+2n, ... of the grid (i in 0..n-1), so n
  hosts sharing `--root_dir` split the grid;
* `--dry_run`: print the commands (finished runs as `# finished: ...`).

A bare boolean flag (`--affine_test`) stays bare. A flag that takes several
numbers (`--schedule`, `--step_factors`, `--loss_params`) takes them as in
`train.py` for one value (`--schedule 500 1000 1500`); to sweep it, write
each value with commas: `--schedule 100,150 200,300`.
"""

import argparse
import collections
import datetime
import hashlib
import itertools
import os
import shlex
import signal
import subprocess
import sys
import time

from patchup_tf.app.cli import process_settings
from patchup_tf.app.experiment import config as flags_lib
from patchup_tf.app import folder as folder_lib
from patchup_tf.app.folder import has_checkpoint

LOG_DIR = "sweep_logs"

# The trainer, as a command prefix (`patchup-train`).
TRAIN_COMMAND = [sys.executable, "-m", "patchup_tf.app.cli.train"]

# Trainer flags that do not change what a finished folder holds (a finished
# run made with other values of these is still skipped; --fsgm_attack and
# --affine_test are checked against report.json instead).


class SweepError(ValueError):
    """A sweep command line that cannot run; the message says why."""


class _ParseError(Exception):
    pass


class Run:
    """One command of the grid: its trainer argv, its value of each swept
    flag (`combo`), its parsed flags and its experiment folder."""

    def __init__(self, index, argv, combo, config):
        self.index, self.argv, self.combo, self.config = index, argv, combo, config
        self.args = config.args
        self.folder, self.name = config.experiment_dir, config.name

    def command(self):
        return [*TRAIN_COMMAND, *self.argv]


# ------------------------------------------------------------------ parsing
def _is_flag(token):
    if not token.startswith("-") or token == "-":
        return False
    try:
        float(token)
        return False  # a negative number is a value
    except ValueError:
        return True


def _groups(argv):
    """`[(flag, [values...]), ...]` in order; `--flag=v` is `--flag v`."""
    groups = []
    for token in argv:
        if _is_flag(token):
            flag, eq, value = token.partition("=")
            groups.append((flag, [value] if eq else []))
        elif not groups:
            raise SweepError(f"{token!r} comes before any flag; every value follows its --flag")
        else:
            groups[-1][1].append(token)
    return groups


def _one(flag, values, convert=str):
    if len(values) != 1:
        raise SweepError(f"{flag} takes one value (the sweep's own option), got {values or 'none'}")
    try:
        return convert(values[0])
    except ValueError:
        raise SweepError(f"{flag} {values[0]}: not a valid value") from None


def _trainer_parser():
    """The trainer's parser, raising instead of exiting on a bad command."""
    parser = flags_lib.build_parser()

    def error(message):
        raise _ParseError(message)

    parser.error = error
    return parser


def _actions(parser):
    return {s: action for action in parser._actions for s in action.option_strings}


def parse(argv):
    """Splits a sweep command line into `(options, axes)`.

    `axes` is `[(flag, [value_tokens, ...]), ...]`: each value is the list of
    tokens that follow `flag` in one run's command (empty for a bare flag).
    """
    parser = _trainer_parser()
    actions = _actions(parser)
    options = argparse.Namespace(parallel=None, gpus=None, dry_run=False, shard=(0, 1),
                                 root_dir=parser.get_default("root_dir"), help=False)
    axes, seen = [], set()
    for flag, values in _groups(argv):
        if flag in ("-h", "--help"):
            options.help = True
        elif flag == "--parallel":
            options.parallel = _one(flag, values, int)
            if options.parallel < 1:
                raise SweepError(f"--parallel {options.parallel}: expected an int >= 1")
        elif flag == "--gpus":
            ids = [g for v in values for g in v.split(",") if g.strip()]
            if not ids:
                raise SweepError("--gpus needs GPU ids, e.g. --gpus 0,1")
            options.gpus = [g.strip() for g in ids]
        elif flag == "--dry_run":
            try:
                options.dry_run = True if not values else flags_lib.str2bool(_one(flag, values))
            except argparse.ArgumentTypeError as e:
                raise SweepError(f"--dry_run: {e}") from None
        elif flag == "--shard":
            text = _one(flag, values)
            try:
                i, n = (int(p) for p in text.split("/"))
            except ValueError:
                raise SweepError(f"--shard {text}: expected i/n, e.g. --shard 0/4") from None
            if not (n >= 1 and 0 <= i < n):
                raise SweepError(f"--shard {text}: expected i/n with 0 <= i < n")
            options.shard = (i, n)
        elif flag == "--root_dir":
            options.root_dir = _one(flag, values)
        else:
            action = actions.get(flag)
            if action is None:
                import difflib

                known = [*actions, "--parallel", "--gpus", "--dry_run", "--shard"]
                close = difflib.get_close_matches(flag, known, n=1)
                hint = f"; did you mean {close[0]}?" if close else ""
                raise SweepError(f"unknown flag {flag}{hint} (see python scripts/train.py --help)")
            if flag in seen:
                raise SweepError(f"{flag} is given twice; list all its values after one {flag}")
            seen.add(flag)
            axes.append((flag, _values(flag, action, values)))
    return options, axes


def _values(flag, action, tokens):
    """The sweep values of one flag, each as the tokens of one command."""
    multi = action.nargs in ("+", "*") or (isinstance(action.nargs, int) and action.nargs > 1)
    if not tokens:
        if action.nargs in ("?", 0, "*"):
            return [[]]  # a bare flag stays bare
        raise SweepError(f"{flag} needs a value")
    if multi:
        if any("," in t for t in tokens):  # one value per token, its numbers comma-separated
            values = [[p for p in t.split(",") if p] for t in tokens]
            if any(not v for v in values):
                raise SweepError(f"{flag}: empty value in {' '.join(tokens)}")
            return values
        return [list(tokens)]  # as in train.py: all the tokens are one value
    return [[t] for t in tokens]


def expand(options, axes):
    """The grid's runs in order (the last flag varies fastest), validated.

    Raises `SweepError` with one message if any command is bad, or if two
    commands would share an experiment folder.
    """
    parser = _trainer_parser()
    flags = [flag for flag, _ in axes]
    commands, seen = [], set()
    for combo in itertools.product(*(values for _, values in axes)):
        argv = ["--root_dir", options.root_dir]
        for flag, value in zip(flags, combo):
            argv += [flag, *value]
        if tuple(argv) not in seen:  # a value given twice is one run
            seen.add(tuple(argv))
            commands.append((argv, combo))
    runs, errors, folders = [], collections.OrderedDict(), {}
    for argv, combo in commands:
        try:
            config = flags_lib.RunConfig.from_argv(argv, parser)
            folder = config.experiment_dir
        except (_ParseError, ValueError) as e:  # FlagError is a ValueError
            errors.setdefault(str(e), []).append(argv)
            continue
        if folder in folders:
            other = folders[folder]
            differ = [flag for flag, a, b in zip(flags, other.combo, combo) if a != b]
            raise SweepError(
                f"two runs would share the experiment folder {folder}: its name leaves out "
                f"{', '.join(differ)}; sweep such a flag in separate sweeps, each with its own "
                f"--add_name or --root_dir (runs: train.py {shlex.join(other.argv)} and "
                f"train.py {shlex.join(argv)})")
        run = Run(len(runs), argv, combo, config)
        folders[folder] = run
        runs.append(run)
    if errors:
        message, bad = next(iter(errors.items()))
        more = len(errors) - 1
        raise SweepError(
            f"{message} ({len(bad)} of {len(commands)} runs, e.g. train.py {shlex.join(bad[0])})"
            + (f"; {more} other problem{'s' if more > 1 else ''} too" if more else "")
            + "; nothing was run")
    return runs


# ------------------------------------------------------------------ status
def _read(read, folder):
    """`read(folder)` (a `patchup_tf.app.folder` reader), None if unreadable."""
    try:
        return read(folder)
    except (OSError, ValueError):
        return None


def is_finished(run):
    """True if `run.folder` holds this run's final report and model."""
    report = _read(folder_lib.read_report, run.folder)
    if not isinstance(report, dict) or not os.path.isdir(folder_lib.saved_model_path(run.folder)):
        return False
    if run.args.fsgm_attack and "fgsm" not in report:
        return False  # asked for now: the trainer adds it to the finished run
    if run.args.affine_test and "affine" not in report:
        return False
    saved = _read(folder_lib.read_flags, run.folder)
    try:
        return not flags_lib.differences(saved, run.config.to_json())
    except (ValueError, AttributeError):
        return False  # not a flags.json of this trainer: let the trainer decide


def log_path(root_dir, name):
    """`root_dir/sweep_logs/<name>.log` (long names shortened with a hash)."""
    if len(name.encode()) > 200:
        name = name[:150] + "_" + hashlib.sha1(name.encode()).hexdigest()[:12]
    return os.path.join(root_dir, LOG_DIR, name + ".log")


def _cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def child_env(parallel, gpu=None, base=None):
    """The environment of one run: the programs' defaults (`process_settings`),
    threads split `parallel` ways, its GPU."""
    env = process_settings(dict(os.environ if base is None else base))
    env["PYTHONUNBUFFERED"] = "1"
    if parallel > 1:
        threads = str(max(1, _cores() // parallel))
        for key in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
            env[key] = threads
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    elif parallel > 1:
        env.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")  # runs sharing a GPU
    return env


# --------------------------------------------------------------- reporting
def _duration(seconds):
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def _bar(k, total, width=20):
    filled = width * k // max(total, 1)
    return "[" + "#" * filled + "-" * (width - filled) + f"] {k}/{total}"


class _Progress:
    def __init__(self, total):
        self.total, self.count = total, 0

    def line(self, status, run, detail=""):
        self.count += 1
        print(f"{_bar(self.count, self.total)} {status:<8} {run.name}"
              + (f"  {detail}" if detail else ""), flush=True)


def _result_detail(run, seconds):
    report = _read(folder_lib.read_report, run.folder) or {}
    error = (report.get("test") or {}).get("error") if isinstance(report, dict) else None
    text = _duration(seconds)
    if isinstance(error, (int, float)):
        text += f", test error {error:.2f}%"
    return text


# --------------------------------------------------------------------- run
class Interrupted(Exception):
    pass


def _raise_interrupted(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


def execute(runs, options):
    """Runs `runs` (already filtered), `options.parallel` at a time; returns counts."""
    gpus = options.gpus
    parallel = options.parallel or (len(gpus) if gpus else 1)
    pending = collections.deque(runs)
    running = {}  # Popen -> (run, gpu, start, resumed, log)
    done, failed = [], []
    progress = _Progress(len(runs))
    previous = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGTERM,)}
    try:
        while pending or running:
            while pending and len(running) < parallel:
                run = pending.popleft()
                gpu = _least_busy_gpu(gpus, running)
                proc, entry = _start_run(run, gpu, parallel, options.root_dir)
                running[proc] = entry
            finished = [p for p in running if p.poll() is not None]
            if not finished:
                time.sleep(0.2)
                continue
            for proc in finished:
                _record_finished(proc, running.pop(proc), done, failed, progress,
                                 options.root_dir)
    except (KeyboardInterrupt, Interrupted):
        _stop_running(running)
        print(f"sweep interrupted: {len(done)} done, {len(running)} stopped, "
              f"{len(pending)} not started; the same command continues it", flush=True)
        raise Interrupted from None
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return done, failed


def _least_busy_gpu(gpus, running):
    """The GPU of `gpus` with the fewest running runs (the first on a tie);
    None without GPUs."""
    gpu = None
    if gpus:
        busy = collections.Counter(g for _, g, *_ in running.values())
        gpu = min(gpus, key=lambda g: busy[g])
    return gpu


def _start_run(run, gpu, parallel, root_dir):
    """Starts `run` as a child process, its output appended to its log after a
    header line (time, command, GPU).

    Returns the process and its `(run, gpu, start, resumed, log)` entry.
    """
    path = log_path(root_dir, run.name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    resumed = has_checkpoint(run.folder)
    log = open(path, "a")
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    log.write(f"# {stamp} {shlex.join(run.command())}"
              + (f"  (CUDA_VISIBLE_DEVICES={gpu})" if gpu is not None else "") + "\n")
    log.flush()
    proc = subprocess.Popen(run.command(), stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=child_env(parallel, gpu))
    return proc, (run, gpu, time.monotonic(), resumed, log)


def _record_finished(proc, entry, done, failed, progress, root_dir):
    """Closes a finished run's log, adds it to `done` or `failed` and prints
    its progress line."""
    run, _, start, resumed, log = entry
    log.close()
    seconds = time.monotonic() - start
    if proc.returncode == 0:
        done.append(run)
        progress.line("resumed" if resumed else "done", run,
                      _result_detail(run, seconds))
    else:
        failed.append((run, proc.returncode))
        log_file = log_path(root_dir, run.name)
        progress.line("FAILED", run, f"exit {proc.returncode} after "
                      f"{_duration(seconds)}, log: {log_file}")


def _stop_running(running):
    """Terminates the running runs, kills those still alive after 30 s in all,
    and closes their logs."""
    for proc in running:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + 30
    for proc, (_, _, _, _, log) in running.items():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()

