"""The human-readable table of a run, and its JSON file."""

import statistics

from benchmarks.configs import IMPL, TORCH_IMPL, config_label

LEGEND = (
    "x van: img/s over vanilla's (same impl, arch, precision, XLA, BN, input, variant, same run); "
    "ovh: vanilla's wall time per step -> this one's. CPU-s/st: process CPU seconds per step; "
    "CPU ovh: the same overhead in CPU time, robust to other processes' load. util: CPU-s per "
    "wall-s (= cores busy; below the core count means the run was starved and wall figures are "
    "noisy). retr: new train_step traces during timing (0 expected; '-' where the step runs "
    "eagerly: PyTorch, JAX with XLA off). x tf: img/s over the same config's on the TensorFlow "
    "backend (same run, interleaved; JAX and PyTorch time whole fit calls on NumPy batches). "
    "x torch: img/s over the PyTorch original's same method in float32 (same run, "
    "interleaved; its fastest variant); x t CPU: the original's CPU-s per step (its cheapest "
    "variant) over this one's.")
HEAD = (f"{'impl':<15}{'backend':<11}{'method':<15}{'precision':<15}{'xla':<4}{'bn':<6}"
        f"{'input':<8}{'img/s':>8}{'windows':>18}{'ms/step':>8}{'x van':>7}{'ovh':>7}"
        f"{'CPU-s/st':>9}{'CPU ovh':>8}{'util':>5}{'retr':>5}{'MiB':>6}{'x tf':>6}"
        f"{'x torch':>8}{'x t CPU':>8}")


def _fmt(value, spec, missing="-"):
    return missing if value is None else format(value, spec)


def _pct(value):
    return _fmt(None if value is None else 100 * value, "+.1f") + "%"


def _header(results):
    m, st = results["machine"], results["settings"]
    versions = ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items() if v)
    lines = [
        f"PatchUp-TF benchmark  {m['date']}",
        f"machine: {m['cpu_model']} ({', '.join(m['cpu_flags'])}), {m['cores']} cores, "
        f"{m.get('memory_gb')} GiB, GPU: {m.get('gpus') or 'none'}",
        f"software: Python {m['python']}, {versions}; env {m.get('env') or '{}'}",
        f"load average (1/5/15 min) at start {m.get('loadavg_start')}, at end "
        f"{results.get('loadavg_end')}",
        f"settings: batch {st['batch_size']}, {st['steps']} step(s) x {st['windows']} windows "
        f"(median; configs interleaved window by window unless isolated), warm-up "
        f"{st['warmup']} fit step(s) + 1 call, timer={st['timer']}"
        + (" (fit off TensorFlow)" if set(st.get("backends") or ()) - {"tensorflow"} else "")
        + f", mode={st.get('mode')}",
    ]
    if results.get("tf"):
        lines.append(f"TensorFlow in this process: {results['tf']}")
    for w in results.get("workers") or []:
        extra = f" torch {w['torch']}, {w.get('torch_threads')} threads" if w.get("torch") else ""
        lines.append(f"worker {w['name']}: env {w.get('env') or '{}'}{extra}"
                     + (f" ERROR {w['error']}" if w.get("error") else ""))
    if results.get("torch_skipped"):
        lines.append(f"PyTorch original: skipped ({results['torch_skipped']})")
    return lines + [""]


def _train_line(r):
    torch_row = r.get("impl") == TORCH_IMPL
    xla = "on" if r.get("xla_effective", r.get("xla")) else "off"
    backend = "-" if torch_row else r.get("backend", "tensorflow")
    prefix = (f"{r.get('impl', IMPL):<15}{backend:<11}{r.get('method', '?'):<15}"
              f"{r.get('precision', '?'):<15}{xla:<4}"
              f"{'-' if torch_row else r.get('batchnorm', '-'):<6}"
              f"{'-' if torch_row else r.get('input', '-'):<8}")
    if r.get("error"):
        return f"{prefix} ERROR {str(r['error'])[:150]}"
    if r.get("skipped"):
        return f"{prefix} SKIPPED {r['skipped']}"
    util = statistics.median(r["cpu_util_windows"]) if r.get("cpu_util_windows") else None
    return (f"{prefix}{_fmt(r.get('img_per_s'), '.1f'):>8}"
            f"{'/'.join(f'{v:.0f}' for v in r.get('img_per_s_windows', [])):>18}"
            f"{_fmt(r.get('step_ms'), '.0f'):>8}{_fmt(r.get('ratio_to_vanilla'), '.3f'):>7}"
            f"{_pct(r.get('overhead_vs_vanilla')):>7}{_fmt(r.get('cpu_s_per_step'), '.2f'):>9}"
            f"{_pct(r.get('cpu_overhead_vs_vanilla')):>8}{_fmt(util, '.2f'):>5}"
            f"{_fmt(r.get('retraces'), 'd'):>5}{_fmt(r.get('peak_rss_mb'), '.0f'):>6}"
            f"{_fmt(r.get('x_tf_img_per_s'), '.2f'):>6}"
            f"{_fmt(r.get('x_torch_img_per_s'), '.2f'):>8}{_fmt(r.get('x_torch_cpu'), '.2f'):>8}"
            + (f"  [{r['variant']}]" if r.get("variant") else ""))


def _train(results):
    lines = []
    for arch in sorted({r.get("arch") for r in results["train"]} - {None}):
        lines += [f"[{arch}]", HEAD, "-" * len(HEAD)]
        lines += [_train_line(r) for r in results["train"] if r.get("arch") == arch]
        lines.append("")
    return lines


def _section(title, rows, line):
    """`title`, one `line(row)` per row and a blank line; nothing without rows."""
    return [title, *(line(r) for r in rows), ""] if rows else []


def _memory_line(r):
    if r.get("error"):
        return f"  {config_label(r):<70} ERROR {str(r['error'])[:120]}"
    ratio = r.get("x_torch_peak_rss")
    return (f"  {config_label(r):<70}{_fmt(r.get('peak_rss_mb'), '.0f'):>7} MiB"
            + (f"  x{ratio:.2f} the original's" if ratio else ""))


def _mix_line(r):
    xla = "on " if r.get("xla") else "off"
    head = (f"  {r['mode']:<9}{r.get('precision', ''):<15}xla={xla} position {r['position']} "
            f"{str(r.get('shape', '')):<20}")
    if r.get("error"):
        return f"{head} ERROR {r['error'][:120]}"
    return f"{head}{r['ms_per_call']:>8.2f} ms {r['cpu_ms_per_call']:>8.2f} CPU-ms"


def _pipeline_line(p):
    if p.get("error"):
        return f"  {p.get('pipeline', '?')}: ERROR {p['error'][:150]}"
    return (f"  {p['name']:<70}{p['img_per_s']:>9.0f} img/s  "
            f"x{_fmt(p.get('ratio_to_fastest_model'), '.0f')}  "
            f"{p['cpu_ms_per_batch']:.1f} CPU-ms/batch, "
            f"peak {_fmt(p.get('peak_rss_mb'), '.0f')} MiB")


def _pipeline_title(results):
    fastest = results.get("fastest_train_config")
    return ("input pipeline alone, as the trainer builds it (x = ratio to the fastest train "
            "config" + (f", {fastest['method']}/{fastest['precision']} "
                        f"{fastest['img_per_s']:.1f} img/s" if fastest else "") + "):")


def format_table(results):
    """The human-readable report of `results` (see `benchmarks.run.run_benchmark`)."""
    lines = _header(results) + _train(results)
    lines += _section("peak RSS, each configuration alone in a fresh process (build, warm-up "
                      "and timed steps):", results.get("memory"), _memory_line)
    lines += _section("PatchUp's own ops alone (mask + pairing + mix, forward and backward, "
                      "per call; xla: the same compiled by XLA):", results.get("mix_ops"),
                      _mix_line)
    lines += _section(_pipeline_title(results), results.get("pipeline"), _pipeline_line)
    lines += [LEGEND, f"MiB: peak RSS, {results['settings'].get('rss_scope')}.  Total wall "
                      f"{results.get('wall_s', 0):.0f} s."]
    return "\n".join(lines)


def write_results(path, results):
    """Writes the JSON whole or not at all."""
    from patchup_tf.files import write_json

    write_json(path, results)
