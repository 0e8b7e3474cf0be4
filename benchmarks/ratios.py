"""Ratios between the rows of one run: to the same group's vanilla, to the
same config on TensorFlow (per Keras backend), to the PyTorch original's same
method, and the input pipeline to the fastest step.
No targets here: they and which run meets them are in `benchmarks/results/`."""

from benchmarks.configs import IMPL, TORCH_IMPL

GROUP_KEYS = ("impl", "arch", "precision", "xla", "batchnorm", "input", "variant", "backend")
SAME_CONFIG = ("method",) + tuple(k for k in GROUP_KEYS if k != "backend")


def _vanilla_ratios(train):
    timed = [r for r in train if r.get("img_per_s")]
    for r in train:
        base = [v for v in timed if v.get("method") == "vanilla"
                and all(v.get(k) == r.get(k) for k in GROUP_KEYS)]
        base = base[0] if base else {}
        ratio = r["img_per_s"] / base["img_per_s"] if base and r.get("img_per_s") else None
        r["ratio_to_vanilla"] = ratio
        r["overhead_vs_vanilla"] = 1.0 / ratio - 1.0 if ratio else None
        r["cpu_overhead_vs_vanilla"] = (r["cpu_s_per_step"] / base["cpu_s_per_step"] - 1.0
                                        if r.get("cpu_s_per_step") and base.get("cpu_s_per_step")
                                        else None)


def _backend_ratios(train):
    """`x_tf_img_per_s`: img/s over the same config's on TensorFlow (runs with
    another backend only)."""
    ours = [r for r in train if r.get("impl", IMPL) == IMPL]
    if all(r.get("backend", "tensorflow") == "tensorflow" for r in ours):
        return
    tf_rows = [r for r in ours if r.get("backend", "tensorflow") == "tensorflow"
               and r.get("img_per_s")]
    for r in ours:
        ref = [t for t in tf_rows if all(t.get(k) == r.get(k) for k in SAME_CONFIG)]
        r["x_tf_img_per_s"] = (r["img_per_s"] / ref[0]["img_per_s"]
                               if ref and r.get("img_per_s") else None)


def _torch_ratios(train):
    """Against the original's best for the same arch and method: its fastest
    variant (img/s) and its cheapest (CPU-s per step, > 1: ours costs less)."""
    theirs = [r for r in train if r.get("impl") == TORCH_IMPL and r.get("img_per_s")]
    for r in train:
        if r.get("impl", IMPL) != IMPL or not r.get("img_per_s"):
            continue
        ref = [t for t in theirs if t.get("method") == r.get("method")
               and t.get("arch") == r.get("arch")]
        if not ref:
            continue
        fastest = max(ref, key=lambda v: v["img_per_s"])
        r["x_torch_img_per_s"] = r["img_per_s"] / fastest["img_per_s"]
        r["torch_variant_img_per_s"] = fastest.get("variant", "")
        cheap = [v for v in ref if v.get("cpu_s_per_step")]
        if r.get("cpu_s_per_step") and cheap:
            cheapest = min(cheap, key=lambda v: v["cpu_s_per_step"])
            r["x_torch_cpu"] = cheapest["cpu_s_per_step"] / r["cpu_s_per_step"]
            r["torch_variant_cpu"] = cheapest.get("variant", "")


def _memory_ratios(memory):
    for m in memory:
        if m.get("impl", IMPL) != IMPL or not m.get("peak_rss_mb"):
            continue
        ref = [t for t in memory if t.get("impl") == TORCH_IMPL
               and t.get("method") == m.get("method") and t.get("peak_rss_mb")]
        if ref:
            m["x_torch_peak_rss"] = m["peak_rss_mb"] / ref[0]["peak_rss_mb"]


def add_ratios(results):
    """Adds the ratios to `results` (its `train`, `memory` and `pipeline` rows)."""
    train = results["train"]
    _vanilla_ratios(train)
    _backend_ratios(train)
    _torch_ratios(train)
    _memory_ratios(results.get("memory") or [])
    ours = [r for r in train if r.get("impl", IMPL) == IMPL and r.get("img_per_s")]
    fastest = max(ours, key=lambda v: v["img_per_s"]) if ours else None
    results["fastest_train_config"] = (
        {k: fastest.get(k) for k in ("arch", "method", "precision", "xla", "batchnorm",
                                     "input", "backend", "img_per_s")} if fastest else None)
    for p in results.get("pipeline") or []:
        p["ratio_to_fastest_model"] = (p["img_per_s"] / fastest["img_per_s"]
                                       if fastest and p.get("img_per_s") else None)
    return results
