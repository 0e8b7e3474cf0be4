"""Ratios between the rows of one run, the report (markdown) and its JSON.

Ratios: to the same group's vanilla, to the same config on TensorFlow (per
Keras backend) and in the first environment variant, to the PyTorch
original's same method, and the input pipeline to the fastest step. No
targets here: they and which run meets them are in `benchmarks/results/`."""

import statistics

from benchmarks.configs import IMPL, TORCH_IMPL, config_label

GROUP_KEYS = ("impl", "arch", "precision", "xla", "batchnorm", "input", "variant", "backend")
LEGEND = (
    "x van: img/s over vanilla's (same impl, arch, precision, XLA, BN, input, variant, backend); "
    "ovh, CPU ovh: the time per step over vanilla's, wall and process CPU (robust to other "
    "load). util: CPU-s per wall-s (below the core count: starved, noisy wall figures). retr: "
    "new train_step traces while timed ('-': eager). x tf: img/s over the same config's on "
    "TensorFlow; x var: in the first environment variant; x torch: over the PyTorch "
    "original's same method (its fastest variant); x t CPU: its CPU-s per step (its cheapest "
    "variant) over this one's. MiB: peak RSS; GPU MiB: peak GPU memory.")


def _div(a, b):
    return a / b if a and b else None


def _same(row, keys):
    """A test: has a candidate row the values of `row` at `keys`?"""
    return lambda other: all(other.get(k) == row.get(k) for k in keys)


def _over_reference(rows, field, reference, out):
    """`out`: img/s over the same config's where `field` is `reference` (runs
    where `field` takes several values only)."""
    if len({r.get(field) for r in rows}) > 1:
        keys = [k for k in ("method",) + GROUP_KEYS if k != field]
        refs = [r for r in rows if r.get(field) == reference and r.get("img_per_s")]
        for r in rows:
            ref = next(filter(_same(r, keys), refs), {})
            r[out] = _div(r.get("img_per_s"), ref.get("img_per_s"))


def _torch_ratios(train):
    """Against the original's best for the same arch and method: its fastest
    variant (img/s) and its cheapest (CPU-s per step, > 1: ours costs less)."""
    theirs = [r for r in train if r.get("impl") == TORCH_IMPL and r.get("img_per_s")]
    for r in train:
        ref = list(filter(_same(r, ("method", "arch")), theirs))
        if r.get("impl", IMPL) != IMPL or not r.get("img_per_s") or not ref:
            continue
        fastest = max(ref, key=lambda v: v["img_per_s"])
        cheapest = min(ref, key=lambda v: v.get("cpu_s_per_step") or float("inf"))
        r.update(x_torch_img_per_s=r["img_per_s"] / fastest["img_per_s"],
                 torch_variant_img_per_s=fastest.get("variant", ""),
                 x_torch_cpu=_div(cheapest.get("cpu_s_per_step"), r.get("cpu_s_per_step")),
                 torch_variant_cpu=cheapest.get("variant", ""))


def add_ratios(results):
    """Adds the ratios to `results` (its `train`, `memory` and `pipeline` rows)."""
    train = results["train"]
    timed = [r for r in train if r.get("img_per_s")]
    for r in train:
        base = next(filter(_same({**r, "method": "vanilla"}, ("method",) + GROUP_KEYS), timed), {})
        r["ratio_to_vanilla"] = ratio = _div(r.get("img_per_s"), base.get("img_per_s"))
        r["overhead_vs_vanilla"] = ratio and 1.0 / ratio - 1.0
        cpu = _div(r.get("cpu_s_per_step"), base.get("cpu_s_per_step"))
        r["cpu_overhead_vs_vanilla"] = cpu and cpu - 1.0
    ours = [r for r in train if r.get("impl", IMPL) == IMPL]
    _over_reference(ours, "backend", "tensorflow", "x_tf_img_per_s")
    _over_reference(ours, "variant", ours[0].get("variant") if ours else None,
                    "x_variant_img_per_s")
    _torch_ratios(train)
    memory = results.get("memory") or []
    for m in memory:
        ref = [t for t in memory if t.get("impl") == TORCH_IMPL and _same(m, ("method",))(t)]
        if m.get("impl", IMPL) == IMPL and ref:
            m["x_torch_peak_rss"] = _div(m.get("peak_rss_mb"), ref[0].get("peak_rss_mb"))
    fastest = max((r for r in ours if r.get("img_per_s")), key=lambda v: v["img_per_s"],
                  default={})
    results["fastest_train_config"] = {k: fastest.get(k) for k in (
        "arch", "method", "precision", "xla", "batchnorm", "input", "backend", "img_per_s")}
    for p in results.get("pipeline") or []:
        p["ratio_to_fastest_model"] = _div(p.get("img_per_s"), fastest.get("img_per_s"))
    return results


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


COLUMNS = (  # (header, a timed row's key, its format; "/": each window's, "median")
    ("img/s", "img_per_s", ".1f"), ("windows", "img_per_s_windows", "/"),
    ("ms/step", "step_ms", ".0f"), ("x van", "ratio_to_vanilla", ".3f"),
    ("ovh", "overhead_vs_vanilla", "+.1%"), ("CPU-s/st", "cpu_s_per_step", ".2f"),
    ("CPU ovh", "cpu_overhead_vs_vanilla", "+.1%"), ("util", "cpu_util_windows", "median"),
    ("retr", "retraces", "d"), ("MiB", "peak_rss_mb", ".0f"), ("x tf", "x_tf_img_per_s", ".2f"),
    ("x var", "x_variant_img_per_s", ".2f"), ("x torch", "x_torch_img_per_s", ".2f"),
    ("x t CPU", "x_torch_cpu", ".2f"), ("GPU MiB", "gpu_peak_mb", ".0f"))
HEAD = ("impl", "backend", "method", "precision", "xla", "bn", "input",
        *(h for h, _, _ in COLUMNS), "variant / note")


def _cell(value, spec):
    if spec == "/":
        return "/".join(f"{v:.0f}" for v in value or [])
    return _fmt(statistics.median(value) if spec == "median" and value else value,
                ".2f" if spec == "median" else spec)


def _train_line(r):
    theirs = r.get("impl") == TORCH_IMPL
    cells = [r.get("impl", IMPL), "-" if theirs else r.get("backend", "tensorflow"),
             r.get("method", "?"), r.get("precision", "?"),
             "on" if r.get("xla_effective", r.get("xla")) else "off",
             "-" if theirs else r.get("batchnorm", "-"), "-" if theirs else r.get("input", "-")]
    note = (f"ERROR {str(r['error'])[:150]}" if r.get("error") else
            f"SKIPPED {r['skipped']}" if r.get("skipped") else r.get("variant") or "")
    timed = [_cell(r.get(key), spec) for _, key, spec in COLUMNS]
    timed = [""] * len(COLUMNS) if note.startswith(("ERROR", "SKIPPED")) else timed
    return "| " + " | ".join(map(str, cells + timed + [note.replace("|", "/")])) + " |"


def _header(results):
    m, st = results["machine"], results["settings"]
    versions = ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items() if v)
    fit = " (fit off TensorFlow)" if set(st.get("backends") or ()) - {"tensorflow"} else ""
    return [f"# PatchUp-TF benchmark  {m['date']}", "", *(line + "  " for line in (
        f"machine: {m['cpu_model']} ({', '.join(m['cpu_flags'])}), {m['cores']} cores, "
        f"{m.get('memory_gb')} GiB, GPU: {m.get('gpus') or 'none'}",
        f"software: Python {m['python']}, {versions}; env {m.get('env') or '{}'}",
        f"load average (1/5/15 min) at start {m.get('loadavg_start')}, at end "
        f"{results.get('loadavg_end')}",
        f"settings: batch {st['batch_size']}, {st['steps']} step(s) x {st['windows']} windows "
        f"(median), warm-up {st['warmup']} fit step(s) + 1 call, timer={st['timer']}{fit}, "
        f"mode={st.get('mode')}",
        *(f"worker {w['name']}: env {w.get('env') or '{}'}" + (
            f" torch {w['torch']}, {w.get('torch_threads')} threads" if w.get("torch") else "")
          + (f" ERROR {w['error']}" if w.get("error") else "") for w in results["workers"]),
        *([f"PyTorch original: skipped ({results['torch_skipped']})"]
          if results.get("torch_skipped") else []))), ""]


SECTIONS = (  # (results key, title, an item's label, its figures)
    ("memory", "Peak RSS, each configuration alone in a fresh process (build, warm-up and "
     "timed steps)", config_label,
     lambda r: f"{_fmt(r.get('peak_rss_mb'), '.0f')} MiB" + (
         f", x{r['x_torch_peak_rss']:.2f} the original's" if r.get("x_torch_peak_rss") else "")),
    ("mix_ops", "PatchUp's own ops alone (mask + pairing + mix, forward and backward, per "
     "call; xla: the same compiled by XLA)",
     lambda r: f"{r['mode']} {r['precision']} xla={'on' if r['xla'] else 'off'} position "
               f"{r['position']} {r['shape']}",
     lambda r: f"{r['ms_per_call']:.2f} ms, {r['cpu_ms_per_call']:.2f} CPU-ms"),
    ("pipeline", "Input pipeline alone, as the trainer builds it (x: over the fastest train "
     "config's img/s)", lambda r: r.get("name", r["pipeline"]),
     lambda r: f"{r['img_per_s']:.0f} img/s, x{_fmt(r.get('ratio_to_fastest_model'), '.0f')}, "
               f"{r['cpu_ms_per_batch']:.1f} CPU-ms/batch, peak "
               f"{_fmt(r.get('peak_rss_mb'), '.0f')} MiB"),
)


def format_table(results):
    """The report of `results` (see `benchmarks.run.run_benchmark`), in markdown."""
    lines = _header(results)
    for arch in sorted({r.get("arch") for r in results["train"]} - {None}):
        lines += [f"## {arch}", "", "| " + " | ".join(HEAD) + " |", "|---" * len(HEAD) + "|"]
        lines += [_train_line(r) for r in results["train"] if r.get("arch") == arch] + [""]
    for key, title, label, figures in SECTIONS:
        rows = results.get(key) or []
        lines += [f"## {title}", ""] * bool(rows) + [
            f"- {label(r)}: " + (f"ERROR {str(r['error'])[:150]}" if r.get("error")
                                 else figures(r)) for r in rows] + [""] * bool(rows)
    scopes = {r["rss_scope"] for r in results["train"] if r.get("rss_scope")}
    lines += [LEGEND, "", f"MiB: peak RSS, {'; '.join(sorted(scopes))}. Total wall "
                          f"{results.get('wall_s', 0):.0f} s."]
    return "\n".join(lines)

