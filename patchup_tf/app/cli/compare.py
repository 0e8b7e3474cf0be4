"""`patchup-compare DIR [DIR ...] [--out OUT]`: one table of finished experiments.

Reads every experiment folder under the DIRs (see `patchup_tf.app.tools.compare`),
groups the runs that differ only in their seed, prints the table and writes
comparison.md/.csv/.json/.png. Exit 0; 1 if no finished run was found;
2 bad arguments. Imports no TensorFlow.
"""

import argparse
import os

from patchup_tf.app.cli import EXIT_FAILED, fail, program
from patchup_tf.app.tools.compare import OUTPUTS, compare, listing


def build_parser():
    p = argparse.ArgumentParser(
        prog="compare.py", description="Tabulate finished experiments by setting, with the seed spread.",
        epilog="Writes comparison.md/.csv/.json/.png; exit 0, 1 if no finished run was found, "
               "2 bad arguments.")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="folders holding experiment folders")
    p.add_argument("--out", default=None, help="where the comparison files go (default: "
                   "the first DIR)")
    return p


@program
def main(argv):
    """`scripts/compare.py`: prints the table and writes the comparison files."""
    parser = build_parser()
    args = parser.parse_args(argv)
    missing = [d for d in args.dirs if not os.path.isdir(d)]
    if missing:
        fail(f"not a folder: {', '.join(missing)}")
    from patchup_tf.app.cli.tf_logging import require_trainer

    require_trainer(("matplotlib",))  # comparison.png
    try:
        result = compare(args.dirs, args.out)
    except OSError as e:
        fail(f"cannot write the comparison into {args.out or args.dirs[0]}: {e.strerror or e}")
    if result["groups"]:
        print(result["table"])
    else:
        print(f"no finished experiment under {', '.join(args.dirs)}")
    lines = listing(result["incomplete"], result["problems"])
    if lines:
        print()
        print("\n".join(lines))
    runs = sum(len(g["runs"]) for g in result["groups"])
    print(f"{runs} finished runs in {len(result['groups'])} groups; wrote "
          + ", ".join(os.path.join(result["out_dir"], name) for name in OUTPUTS))
    return 0 if result["groups"] else EXIT_FAILED



if __name__ == "__main__":
    raise SystemExit(main())
