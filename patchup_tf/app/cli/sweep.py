"""`patchup-sweep`: run a grid of trainer command lines; see `patchup_tf.app.tools.sweep`.

Exit 0 all done; 1 a run failed; 2 bad flags; 130 interrupted. Imports no
TensorFlow (each run is a `patchup-train` process).
"""

import os
import shlex

from patchup_tf.app.cli import EXIT_FAILED, EXIT_INTERRUPTED, fail, program
from patchup_tf.app.tools import sweep


@program
def main(argv):
    """`scripts/sweep.py`: exit 0 all done, 1 a run failed, 2 bad flags, 130 interrupted."""
    try:
        options, axes = sweep.parse(argv)
        if options.help:
            print(sweep.__doc__)
            return 0
        runs = sweep.expand(options, axes)
    except sweep.SweepError as e:
        fail(str(e))
    i, n = options.shard
    selected = runs[i::n]
    finished = [r for r in selected if sweep.is_finished(r)]
    todo = [r for r in selected if r not in finished]
    if options.dry_run:
        for run in selected:
            prefix = "# finished: " if run in finished else ""
            print(prefix + shlex.join(run.command()))
        return 0
    if todo:
        try:
            os.makedirs(os.path.join(options.root_dir, sweep.LOG_DIR), exist_ok=True)
        except OSError as e:
            fail(f"cannot create {os.path.join(options.root_dir, sweep.LOG_DIR)}: {e.strerror or e}")
    parallel = options.parallel or (len(options.gpus) if options.gpus else 1)
    where = f"shard {i}/{n}: {len(selected)} of {len(runs)} runs" if n > 1 else f"{len(runs)} runs"
    print(f"sweep: {where}; {len(finished)} already finished, {len(todo)} to run, "
          f"{parallel} at a time" + (f" on GPUs {','.join(options.gpus)}" if options.gpus else "")
          + f"; logs in {os.path.join(options.root_dir, sweep.LOG_DIR)}", flush=True)
    for run in finished:
        print(f"skipped  {run.name} (finished)", flush=True)
    try:
        done, failed = sweep.execute(todo, options)
    except sweep.Interrupted:
        return EXIT_INTERRUPTED
    print(f"sweep finished: {len(selected)} runs: {len(done)} done, {len(finished)} skipped "
          f"(already finished), {len(failed)} failed", flush=True)
    for run, code in failed:
        print(f"  failed (exit {code}): {shlex.join(run.command())}\n"
              f"    log: {sweep.log_path(options.root_dir, run.name)}", flush=True)
    return EXIT_FAILED if failed else 0



if __name__ == "__main__":
    raise SystemExit(main())
