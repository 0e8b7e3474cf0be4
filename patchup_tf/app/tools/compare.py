"""Compare finished experiments: one row per setting, mean ± sd over the seeds.

    python scripts/compare.py runs/ [MORE_DIRS...] [--out DIR]

reads every experiment folder below the given folders (`flags.json`,
`report.json`, `log.json`), groups the finished runs by every setting except
the seed (and except `--job_id`, the folders and other flags that do not
change the result: `--verbose`, `--resume`, `--checkpoint`, `--strategy`,
`--jit_compile`, the evaluation switches) and writes into `--out` (default:
the first folder):

* `comparison.md`: the table, then the incomplete and unusable folders;
* `comparison.csv`: one row per group, mean / sd / n of every metric;
* `comparison.json`: the groups with their folders and every value;
* `comparison.png`: test error per group with error bars, and FGSM error
  against eps where the runs have it.

Rows are the method plus any other setting that varies across the runs
(method options count when they vary within one method). Columns: test
error, top-5 error and best epoch (1-based, as in the logs) of the best
validation weights, then each deformed set's error and the FGSM error per
eps where present: mean ± sample standard deviation (number of runs).
Method options are compared with their resolved values, so `--alpha 1.0`
and an unset alpha are the same mixup setting. A folder without
`report.json` is listed as incomplete, never averaged; a folder whose files
cannot be read, or whose report disagrees with its flags, is listed too.
Every file is written atomically.
"""

import csv
import io
import json
import math
import os
import statistics

from patchup_tf.app import folder as folder_lib
from patchup_tf.app.experiment import config as flags_lib
from patchup_tf.app.folder import FLAGS_FILE, LOG_JSON, REPORT_FILE
from patchup_tf.files import atomic_write, write_text

OUTPUTS = ("comparison.md", "comparison.csv", "comparison.json", "comparison.png")


class Problem(Exception):
    """A folder that cannot be compared; the message says why."""


# ------------------------------------------------------------------ reading
def find_experiments(directories):
    """Every experiment folder at or below `directories`, sorted, each once."""
    found = set()
    for top in directories:
        for root, dirs, files in os.walk(top):
            if any(m in files for m in folder_lib.MARKERS):
                found.add(os.path.normpath(root))
                dirs[:] = []  # its saved_model/ and tensorboard/ are not experiments
            else:
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    return sorted(found)


def _load(read, folder, name):
    """`read(folder)` (a `patchup_tf.app.folder` reader of the file `name`);
    `FileNotFoundError` as it is, other errors as a `Problem`."""
    try:
        return read(folder)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as e:
        raise Problem(f"{name} is unreadable ({type(e).__name__}: {e})") from None


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def setting(config):
    """The grouping fields of a `flags.json`: its run identity less the seed and
    job id (`patchup_tf.app.experiment.config.identity_of`), and its option names."""
    try:
        fields = flags_lib.identity_of(config)
    except ValueError as e:
        raise Problem(str(e)) from None
    for key in flags_lib.REPLICATE_FLAGS:
        fields.pop(key, None)
    options = {**flags_lib.PAPER_DEFAULTS.get(config["method"], {}),
               **(config.get("method_options") or {})}
    return fields, set(options)

def read_experiment(folder):
    """`("complete" | "incomplete", record)`; raises `Problem` for an unusable folder."""
    try:
        config = _load(folder_lib.read_flags, folder, FLAGS_FILE)
    except FileNotFoundError:
        raise Problem(f"no {FLAGS_FILE}") from None
    if not isinstance(config, dict):
        raise Problem(f"{FLAGS_FILE} is not an object")
    fields, option_keys = setting(config)
    epochs = config.get("epochs")
    record = {"folder": folder, "fields": fields, "option_keys": option_keys,
              "seed": (config.get("flags") or {}).get("seed"), "epochs": epochs}
    try:
        report = _load(folder_lib.read_report, folder, REPORT_FILE)
    except FileNotFoundError:
        try:
            history = _load(folder_lib.read_log, folder, LOG_JSON)
            record["epochs_done"] = len(history) if isinstance(history, list) else None
        except (FileNotFoundError, Problem):
            record["epochs_done"] = 0
        return "incomplete", record
    test = report.get("test") if isinstance(report, dict) else None
    if not isinstance(test, dict) or not _number(test.get("error")):
        raise Problem(f"{REPORT_FILE} has no test error")
    completed = report.get("epochs_completed")
    if _number(epochs) and _number(completed) and completed != epochs:
        raise Problem(f"{REPORT_FILE} is of {completed} epochs but {FLAGS_FILE} asks for "
                      f"{epochs}")
    made_for = report.get("experiment_dir")
    if isinstance(made_for, str) and isinstance(config.get("experiment_dir"), str) and \
            os.path.basename(os.path.normpath(made_for)) != \
            os.path.basename(os.path.normpath(config["experiment_dir"])):
        raise Problem(f"{REPORT_FILE} was written for another experiment "
                      f"({os.path.basename(os.path.normpath(made_for))})")
    record["metrics"] = metrics_of(report)
    return "complete", record


def metrics_of(report):
    """`{column: value}` of one report: errors in %, best epoch."""
    test = report["test"]
    out = {"test error": test["error"]}
    if _number(test.get("top5")):
        out["top-5 error"] = 100.0 - test["top5"]
    if _number(report.get("best_epoch")):
        out["best epoch"] = report["best_epoch"]
    valid = report.get("valid")
    if isinstance(valid, dict) and _number(valid.get("error")):
        out["valid error"] = valid["error"]
    for row in report.get("affine") or []:
        if isinstance(row, dict) and _number(row.get("error")):
            out[f"{row.get('name')} error"] = row["error"]
    for row in report.get("fgsm") or []:
        if isinstance(row, dict) and _number(row.get("eps")) and _number(row.get("accuracy")):
            out[f"FGSM {row['eps']:g} error"] = 100.0 - row["accuracy"]
    return out


# ----------------------------------------------------------------- grouping
def summary(values):
    """`{"mean", "sd", "n", "values"}`; `sd` is the sample standard deviation
    (None for one value)."""
    values = list(values)
    return {"mean": statistics.fmean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else None,
            "n": len(values), "values": values}


def _method_order():
    parser = flags_lib.build_parser()
    for action in parser._actions:
        if "--method" in action.option_strings:
            return list(action.choices or ())
    return []


def _sortable(value):
    """Numbers in numeric order, then text, then missing values."""
    if _number(value):
        return (0, value, "")
    if value is None:
        return (2, 0, "")
    return (1, 0, json.dumps(value, sort_keys=True))


def _key(fields):
    return json.dumps(fields, sort_keys=True)


def group(records):
    """Groups complete runs by setting; returns `(groups, varying_fields)`."""
    groups = {}
    for r in records:
        g = groups.setdefault(_key(r["fields"]), {"fields": r["fields"], "runs": [],
                                                  "option_keys": r["option_keys"]})
        g["runs"].append(r)
    groups = list(groups.values())
    varying, implied = _varying(groups)
    order = {m: i for i, m in enumerate(_method_order())}
    groups.sort(key=lambda g: (order.get(g["fields"]["method"], len(order)),
                               g["fields"]["method"],
                               [_sortable(g["fields"].get(f)) for f in varying]))
    columns = _columns(groups)
    for g in groups:
        g["runs"].sort(key=lambda r: (r["seed"] if isinstance(r["seed"], int) else -1, r["folder"]))
        g["metrics"] = {}
        for column in columns:
            values = [r["metrics"][column] for r in g["runs"] if column in r["metrics"]]
            if values:
                g["metrics"][column] = summary(values)
    return groups, varying, implied, columns


def _varying(groups):
    """`(shown, implied)`: the settings besides the method whose values differ
    between groups (a method option: between groups of the same method).

    `shown` are the ones needed to tell the rows apart, in order (data set,
    arch, schedule, other flags, method options); `implied` differ too but
    follow from those (e.g. the schedule, when it is each arch's default).
    """
    def value(g, name):
        return json.dumps(g["fields"].get(name), sort_keys=True)

    names = []
    for g in groups:
        for k in g["fields"]:
            if k != "method" and k not in names:
                names.append(k)
    shown, implied = [], []
    for name in names:
        is_option = any(name in g["option_keys"] for g in groups)
        blocks = {}
        for g in groups:  # an option is compared within its method
            if is_option and name not in g["option_keys"]:
                continue
            block = (g["fields"]["method"] if is_option else None,
                     *(value(g, k) for k in shown))
            blocks.setdefault(block, set()).add(value(g, name))
        if any(len(v) > 1 for v in blocks.values()):
            shown.append(name)
        elif not is_option and len({value(g, name) for g in groups}) > 1:
            implied.append(name)
    return shown, implied


def _columns(groups):
    first = ["test error", "top-5 error", "best epoch"]
    seen = {c for g in groups for r in g["runs"] for c in r["metrics"]}
    affine = sorted(c for c in seen if c not in first and c != "valid error"
                    and not c.startswith("FGSM "))
    fgsm = sorted((c for c in seen if c.startswith("FGSM ")), key=lambda c: float(c.split()[1]))
    return [c for c in first if c in seen] + affine + fgsm + \
        (["valid error"] if "valid error" in seen else [])


# ------------------------------------------------------------------ writing
def _fmt_value(value):
    if isinstance(value, list):
        return " ".join(_fmt_value(v) for v in value) or "-"
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _fmt_stat(stat, digits=2):
    if stat is None:
        return "-"
    if stat["sd"] is None:
        return f"{stat['mean']:.{digits}f} (1)"
    return f"{stat['mean']:.{digits}f} ± {stat['sd']:.{digits}f} ({stat['n']})"


def _label(group, varying):
    parts = [group["fields"]["method"]]
    parts += [f"{f}={_fmt_value(group['fields'].get(f))}" for f in varying
              if f in group["fields"]]
    return " ".join(parts)


def tables(groups, varying, columns):
    """`[(title, header, rows), ...]`: the main table, then the deformed sets'
    and the FGSM errors where present (the validation error is in CSV/JSON)."""
    main = [c for c in ("test error", "top-5 error", "best epoch") if c in columns]
    fgsm = [c for c in columns if c.startswith("FGSM ")]
    affine = [c for c in columns if c not in main and c not in fgsm and c != "valid error"]
    out = []
    for title, cols, names in (
        ("", main, [f"{c} %" if "error" in c else c for c in main]),
        ("Deformed test sets: error %", affine, [c[:-len(" error")] for c in affine]),
        ("FGSM: test error % at each eps", fgsm, [f"eps {c.split()[1]}" for c in fgsm]),
    ):
        if not cols:
            continue
        rows = []
        for g in groups:
            label = [g["fields"]["method"]]
            label += [_fmt_value(g["fields"].get(f)) if f in g["fields"] else "-"
                      for f in varying]
            rows.append(label + [_fmt_stat(g["metrics"].get(c), 1 if c == "best epoch" else 2)
                                 for c in cols])
        out.append((title, ["method", *varying, *names], rows))
    return out


def render(table_list):
    """The tables as Markdown, each under its title."""
    parts = []
    for title, header, rows in table_list:
        if title:
            parts += [title, ""]
        parts += [markdown_table(header, rows), ""]
    return "\n".join(parts).rstrip("\n")


def markdown_table(header, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]

    def line(cells):
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      *(line(r) for r in rows)])


def listing(incomplete, problems):
    lines = []
    if incomplete:
        lines.append(f"Incomplete (no {REPORT_FILE}, not averaged): {len(incomplete)}")
        for r in incomplete:
            lines.append(f"- {r['folder']}: {r.get('epochs_done', 0)} of "
                         f"{_fmt_value(r.get('epochs'))} epochs logged")
    if problems:
        lines.append(f"Not compared: {len(problems)}")
        for p in problems:
            lines.append(f"- {p['folder']}: {p['reason']}")
    return lines


def write_outputs(out_dir, groups, varying, implied, columns, incomplete, problems):
    table_list = tables(groups, varying, columns)
    table = render(table_list) if groups else "(no finished experiments)"
    md = ["# Comparison", "",
          "Mean ± sample standard deviation (number of runs) over the seeds; errors in %; "
          "best epoch 1-based, as Keras prints it.", "", table, ""]
    if implied:
        md += [f"Also different between rows, following from the columns shown: "
               f"{', '.join(implied)} (see comparison.json).", ""]
    extra = listing(incomplete, problems)
    if extra:
        md += [*extra, ""]
    md += ["Runs per row:", ""]
    for g in groups:
        md.append(f"- {_label(g, varying)}: " + ", ".join(
            os.path.basename(r["folder"]) for r in g["runs"]))
    write_text(os.path.join(out_dir, "comparison.md"), "\n".join(md) + "\n")

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["method", *varying, "runs",
                     *[f"{c} {s}" for c in columns for s in ("mean", "sd", "n")]])
    for g in groups:
        row = [g["fields"]["method"], *[_fmt_value(g["fields"].get(f)) for f in varying],
               len(g["runs"])]
        for c in columns:
            stat = g["metrics"].get(c)
            row += [repr(stat["mean"]), "" if stat["sd"] is None else repr(stat["sd"]),
                    stat["n"]] if stat else ["", "", 0]
        writer.writerow(row)
    write_text(os.path.join(out_dir, "comparison.csv"), buf.getvalue())

    doc = {
        "varying": varying, "implied": implied, "columns": columns,
        "groups": [{"label": _label(g, varying), "setting": g["fields"],
                    "runs": [{"folder": r["folder"], "seed": r["seed"]} for r in g["runs"]],
                    "metrics": g["metrics"]} for g in groups],
        "incomplete": [{"folder": r["folder"], "epochs_done": r.get("epochs_done"),
                        "epochs": r.get("epochs")} for r in incomplete],
        "problems": problems,
    }
    write_text(os.path.join(out_dir, "comparison.json"),
                json.dumps(doc, indent=2, sort_keys=True) + "\n")
    write_plot(os.path.join(out_dir, "comparison.png"), groups, varying, columns)
    return table


def write_plot(path, groups, varying, columns):
    """Test error per group (error bars: sd) and FGSM error against eps."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fgsm = [c for c in columns if c.startswith("FGSM ")]
    panels = 2 if fgsm else 1
    fig = Figure(figsize=(6 * panels, 4.5))
    FigureCanvasAgg(fig)
    labels = [_label(g, varying) for g in groups]
    ax = fig.add_subplot(1, panels, 1)
    means = [g["metrics"]["test error"]["mean"] for g in groups]
    sds = [g["metrics"]["test error"]["sd"] or 0.0 for g in groups]
    ax.bar(range(len(groups)), means, yerr=sds, capsize=4, color="tab:blue", alpha=0.8)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("test error (%)")
    ax.set_title("test error, mean ± sd over seeds")
    ax.grid(axis="y", alpha=0.3)
    if fgsm:
        ax = fig.add_subplot(1, panels, 2)
        for g, label in zip(groups, labels):
            cols = [c for c in fgsm if c in g["metrics"]]
            if not cols:
                continue
            ax.errorbar([float(c.split()[1]) for c in cols],
                        [g["metrics"][c]["mean"] for c in cols],
                        yerr=[g["metrics"][c]["sd"] or 0.0 for c in cols],
                        marker="o", capsize=3, label=label)
        ax.set_xlabel("FGSM eps")
        ax.set_ylabel("test error (%)")
        ax.set_title("FGSM error against eps")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100), suffix=".png")


# --------------------------------------------------------------------- main
def compare(directories, out_dir=None):
    """Reads, groups and writes; returns the comparison as a dict (also printed)."""
    complete, incomplete, problems = [], [], []
    for folder in find_experiments(directories):
        try:
            kind, record = read_experiment(folder)
        except Problem as e:
            problems.append({"folder": folder, "reason": str(e)})
            continue
        (complete if kind == "complete" else incomplete).append(record)
    groups, varying, implied, columns = group(complete)
    out_dir = out_dir or directories[0]
    os.makedirs(out_dir, exist_ok=True)
    table = write_outputs(out_dir, groups, varying, implied, columns, incomplete, problems)
    return {"groups": groups, "varying": varying, "implied": implied, "columns": columns,
            "incomplete": incomplete,
            "problems": problems, "table": table, "out_dir": out_dir}
