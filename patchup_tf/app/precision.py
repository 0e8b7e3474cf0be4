"""Choosing the training precision from evidence, and float32 logits.

`resolve_precision("auto", arch=..., batch_size=...)` returns
`"mixed_bfloat16"` or `"float32"`:

* on GPUs: `mixed_bfloat16` when every visible GPU supports bfloat16
  (compute capability >= 8.0: A100, H100, H200, L4, RTX 30xx and later),
  else `float32`;
* on a CPU without bfloat16 instructions (no `avx512_bf16` / `amx_bf16`, or
  `bf16` on Arm): `float32`, with no measurement (oneDNN would emulate);
* on a CPU with them: a measured probe. One training step of the chosen
  network at the chosen batch is timed in each precision (in a fresh
  process, after a warm-up, a few steps interleaved), and bfloat16 is chosen
  when its median step is at least 5% faster in wall-clock time and costs no
  more CPU time. The figures are printed and cached in
  `~/.cache/patchup_tf/precision.json` (or `$PATCHUP_TF_CACHE_DIR`, or
  `$XDG_CACHE_HOME/patchup_tf`), keyed by the CPU model, its flags, the
  core count, the TensorFlow version, the oneDNN setting, the arch, the
  batch size, the input shape and the class count; later calls read the
  cache and do not measure again. A probe that fails falls back to the rule
  "bfloat16 on a CPU with AMX tiles", which is cached too.

The environment variable `PATCHUP_TF_PRECISION_PROBE` changes the CPU case:
`0` (or `off`) never measures (the AMX rule instead), `refresh` measures
again and overwrites the cached entry.

Why measure: on the 2-core Xeon this project is developed on, bfloat16
needed 46-56% more CPU per PreActResNet18 step than float32 when the CPU had
AVX-512 BF16 but no AMX, and 43% less on a host with AMX; the answer
depends on the CPU, the oneDNN build and the network, so the rule is
measured once per machine and model rather than guessed from flags.

`warn_if_emulated(precision)` prints one warning line on stderr when
mixed_bfloat16 is asked for on a CPU without bfloat16 instructions, where
oneDNN emulates it (the trainer calls it at start; the run goes on).

`float32_logits(model_or_tensor)` makes a classifier's outputs float32 under
a mixed-precision policy (Keras' advice: the last layer computes in float32),
for networks other than `patchup_tf.models` (whose heads already do):
pass it a Keras tensor (the logits, while building a functional model) or a
functional/Sequential model (a new model over the same layers is returned,
ready for `patchup_tf.attachment.attach`).
"""

import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

from patchup_tf.app.constants import PRECISIONS

from patchup_tf.rules import DEFAULT_METHOD, application_name

BF16_MIN_COMPUTE_CAPABILITY = (8, 0)
SPEEDUP_MARGIN = 1.05  # bfloat16 only if its step is at least 5% faster
PROBE_ENV = "PATCHUP_TF_PRECISION_PROBE"
CACHE_ENV = "PATCHUP_TF_CACHE_DIR"
CACHE_FILE = "precision.json"
CACHE_VERSION = 1
_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
# mixed_bfloat16 where oneDNN emulates it: its CPU time per step over
# float32's, and where that was measured (docs/speed.md, "oneDNN and
# bfloat16 on AVX2 CPUs"; 20x in wall-clock time on that shared machine).
EMULATED_BF16_SLOWDOWN = 16.7
EMULATED_BF16_MEASURED = ("PreActResNet18 soft PatchUp, batch 32, 2-core AMD EPYC with AVX2, "
                          "TensorFlow 2.21, 2026-12-08")


# ------------------------------------------------------------ the machine
def cpu_model():
    """The CPU's model name (`/proc/cpuinfo`, else `lscpu`), else what `platform` says."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "cpu model", "hardware")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    for line in out.splitlines():
        if line.lower().startswith("model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags():
    """The CPU's feature flags (`flags` on x86, `Features` on Arm), a set."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("flags", "features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_count():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count()


def tensorflow_version():
    """TensorFlow's version without importing it (its distribution metadata)."""
    for name in ("tensorflow", "tensorflow-cpu", "tf-nightly", "tensorflow-intel"):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    import tensorflow as tf

    return tf.__version__


def gpu_compute_capabilities():
    """`[(major, minor) or None, ...]`, one per visible GPU (TensorFlow's view)."""
    import tensorflow as tf

    caps = []
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            cap = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        except Exception:  # noqa: BLE001 - unknown counts as unsupported
            cap = None
        caps.append(tuple(cap) if cap else None)
    return caps


# ------------------------------------------------------------------ cache
def cache_path(cache_dir=None):
    """Where probe results are cached (see the module docstring)."""
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_ENV)
    if not cache_dir:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        cache_dir = os.path.join(base, "patchup_tf")
    return os.path.join(cache_dir, CACHE_FILE)


def load_cache(path):
    """The cache's entries, `{}` when the file is missing or unreadable (corrupt)."""
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
        return {}
    entries = data.get("entries")
    return entries if isinstance(entries, dict) else {}


def store_entry(path, key, entry):
    """Adds `entry` under `key`; the file is replaced atomically (a corrupt one is rewritten)."""
    from patchup_tf.files import atomic_write

    entries = load_cache(path)
    entries[key] = entry

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump({"version": CACHE_VERSION, "entries": entries}, f, indent=2, sort_keys=True)

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    atomic_write(path, write)


@contextlib.contextmanager
def _locked(path):
    """An exclusive lock beside the cache: one probe per machine at a time."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def probe_key(*, arch, batch_size, input_shape=(32, 32, 3), num_classes=10, model_name=None):
    """The cache key: what the probe's answer depends on."""
    flags = sorted(f for f in cpu_flags() if f in _BF16_FLAGS + ("amx_tile", "avx512f"))
    return json.dumps({
        "cpu": cpu_model(), "cpu_flags": flags, "cores": cpu_count(),
        "tensorflow": tensorflow_version(),
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"),
        "arch": model_name or arch, "batch_size": int(batch_size),
        "input_shape": [int(d) for d in input_shape], "num_classes": int(num_classes),
    }, sort_keys=True)


# ------------------------------------------------------------------ probe
def decide(figures, margin=SPEEDUP_MARGIN):
    """`mixed_bfloat16` if its median step is >= `margin` x faster (wall) and
    costs no more CPU than float32's; `figures[p] = {"wall_s", "cpu_s"}`."""
    f32, bf16 = figures["float32"], figures["mixed_bfloat16"]
    faster = f32["wall_s"] >= margin * bf16["wall_s"]
    cheaper = f32["cpu_s"] >= bf16["cpu_s"]
    return "mixed_bfloat16" if faster and cheaper else "float32"


def measure_steps(benches, steps):
    """Alternates single timed steps of `{precision: KerasSteps}`; medians per precision."""
    walls = {p: [] for p in benches}
    cpus = {p: [] for p in benches}
    for _ in range(steps):
        for precision, bench in benches.items():
            timing = bench.time(1)
            walls[precision].append(timing.wall_s)
            cpus[precision].append(timing.cpu_s)
    return {p: {"wall_s": statistics.median(walls[p]), "cpu_s": statistics.median(cpus[p]),
                "wall_s_steps": walls[p], "cpu_s_steps": cpus[p]} for p in benches}


def _spec_builder(spec):
    """The model `spec["arch"]` names, with `spec["method"]`: one of
    `patchup_tf.models.ARCHS`, or `"keras:<Name>"` for a `keras.applications`
    network with the method attached (as the trainer builds it)."""
    method, classes = spec.get("method", DEFAULT_METHOD), spec.get("num_classes", 10)
    name = application_name(spec["arch"])
    if name is not None:
        from patchup_tf.attachment import attach
        from patchup_tf.models.applications import keras_application

        shape = tuple(spec.get("input_shape", (32, 32, 3)))
        return lambda: attach(keras_application(name, shape, classes), method, seed=0)
    from patchup_tf.models import build

    return lambda: build(spec["arch"], classes, method, seed=0)


def _probe_spec(spec):
    """Runs in the probe's process: times `spec["arch"]` in both precisions."""
    return probe_builder(_spec_builder(spec), batch_size=spec["batch_size"],
                         input_shape=tuple(spec.get("input_shape", (32, 32, 3))),
                         num_classes=spec.get("num_classes", 10), steps=spec.get("steps", 3),
                         warmup=spec.get("warmup", 1))


def probe_subprocess(*, arch, batch_size, input_shape=(32, 32, 3), num_classes=10, steps=3,
                     warmup=1, timeout=900.0):
    """Times one train step of `arch` in float32 and mixed_bfloat16 in a fresh process.

    A fresh process keeps the probe's models, traces and memory out of the
    caller's. `arch` is one of `patchup_tf.models.ARCHS` (fed `(32, 32, 3)`
    images, their size) or `"keras:<Name>"` (a `keras.applications` network
    at `input_shape`, the method attached as the trainer does). Returns the
    figures (see `decide`); raises RuntimeError.
    """
    spec = {"arch": arch, "batch_size": int(batch_size), "num_classes": int(num_classes),
            "input_shape": [int(d) for d in input_shape], "steps": int(steps),
            "warmup": int(warmup)}
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "probe.json")
        # This process's environment, `TF_ENABLE_ONEDNN_OPTS` included: the
        # probe times the kernels this process trains with.
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
               "CUDA_VISIBLE_DEVICES": ""}
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "patchup_tf.app.precision", "--probe", json.dumps(spec),
                 "--out", out], capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired as e:
            raise RuntimeError(f"the probe took more than {timeout:.0f} s") from e
        if proc.returncode or not os.path.exists(out):
            lines = [line for line in proc.stderr.splitlines() if line.strip()]
            raise RuntimeError(f"the probe failed ({proc.returncode}): "
                               f"{(lines or ['no output'])[-1][:300]}")
        with open(out) as f:
            return json.load(f)


def probe_builder(model_builder, *, batch_size, input_shape=(32, 32, 3), num_classes=10,
                  steps=3, warmup=1):
    """Times one train step of `model_builder()` in both precisions, in this process.

    `model_builder()` is called once under each global policy and must
    return a (compiled or not) `MixingModel` or Keras model outputting
    `num_classes` logits; uncompiled ones get `paper_optimizer()`.
    """
    import keras
    import tensorflow as tf

    from patchup_tf.app.steptimer import KerasSteps
    from patchup_tf.training import paper_optimizer

    x = tf.random.stateless_normal([2, batch_size, *input_shape], [0, 1])
    y = tf.one_hot(tf.random.stateless_uniform([2, batch_size], [0, 2], 0, num_classes,
                                               dtype=tf.int32), num_classes)
    data = tf.data.Dataset.from_tensor_slices((x, y)).repeat()
    previous = keras.mixed_precision.global_policy().name
    benches = {}
    try:
        for precision in ("float32", "mixed_bfloat16"):
            keras.mixed_precision.set_global_policy(precision)
            model = model_builder()
            if not getattr(model, "optimizer", None) or not getattr(model, "compiled", True):
                model.compile(optimizer=paper_optimizer())
            benches[precision] = KerasSteps(model, data, warmup=warmup)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    return measure_steps(benches, steps)


def _no_probe_rule(flags):
    return "mixed_bfloat16" if "amx_bf16" in flags else "float32"


def _fmt_figures(figures):
    f32, bf16 = figures["float32"], figures["mixed_bfloat16"]
    return (f"float32 {f32['wall_s']:.3f} s/step ({f32['cpu_s']:.2f} CPU-s), "
            f"mixed_bfloat16 {bf16['wall_s']:.3f} s/step ({bf16['cpu_s']:.2f} CPU-s): "
            f"bf16 x{f32['wall_s'] / bf16['wall_s']:.2f} wall, "
            f"x{f32['cpu_s'] / bf16['cpu_s']:.2f} CPU")


def resolve_precision(requested="auto", *, arch="preactresnet18", batch_size=100,
                      input_shape=(32, 32, 3), num_classes=10, model_builder=None,
                      model_name=None, probe=None, allow_probe=True, gpus=None, cache_dir=None,
                      steps=3, warmup=1, timeout=900.0, log=print):
    """The precision to train in: `requested`, or for `"auto"` the evidence's choice.

    Args:
        requested: `"auto"` or one of `PRECISIONS` (returned as is).
        arch, batch_size, input_shape, num_classes: what the CPU probe times
            (an arch of `patchup_tf.models.ARCHS` or `"keras:<Name>"`, in a
            fresh process).
        model_builder: instead of `arch`, a callable returning the model to
            time (in this process, see `probe_builder`); name it with
            `model_name` for the cache key.
        probe: a callable `(**spec) -> figures` replacing the measurement
            (tests, other harnesses).
        allow_probe: False never measures (multi-host jobs, where every
            host must choose alike): the AMX rule decides on CPUs.
        gpus: compute capabilities `[(major, minor), ...]` instead of asking
            TensorFlow (tests); `[]` means no GPU.
        cache_dir: where `precision.json` lives (default: see `cache_path`).
        steps, warmup, timeout: the probe's timed steps per precision, its
            warm-up steps, its time limit in seconds.
        log: where the decision (and, once, the figures) is printed.

    Returns:
        `"float32"` or `"mixed_bfloat16"` for `"auto"`, else `requested`.
    """
    if requested != "auto":
        _check_requested(requested)
        return requested
    choice = _rule(gpus, allow_probe, log)
    if choice is not None:
        return choice
    path = cache_path(cache_dir)
    key = probe_key(arch=arch, batch_size=batch_size, input_shape=input_shape,
                    num_classes=num_classes,
                    model_name=model_name or (None if model_builder is None else
                                              getattr(model_builder, "__qualname__", "model")))
    spec = {"arch": arch, "batch_size": batch_size, "input_shape": tuple(input_shape),
            "num_classes": num_classes, "steps": steps, "warmup": warmup}
    with _locked(path):
        choice = _cached_choice(path, key, log)
        if choice is not None:
            return choice
        log(f"precision auto: timing one {model_name or arch} step (batch {batch_size}) in "
            "float32 and mixed_bfloat16 on this CPU, once (cached in " + path + ") ...")
        entry = _measure(spec, probe, model_builder, timeout)
        entry["key"] = json.loads(key)
        _store_or_warn(path, key, entry, log)
    detail = f"{_fmt_figures(entry['figures'])}; " if entry["figures"] else ""
    log(f"precision auto: {entry['choice']} ({detail}{entry['reason']})")
    return entry["choice"]


def _check_requested(requested):
    """Raises `ValueError` unless `requested` is one of `PRECISIONS`."""
    if requested not in PRECISIONS:
        raise ValueError(
            f"Invalid value received for argument `requested`. Expected 'auto' or one of "
            f"{', '.join(PRECISIONS)}. Received: requested={requested!r}"
        )


def _cached_choice(path, key, log):
    """The cache's choice for `key` (logged), or None: none cached, or a
    refresh asked for (`PROBE_ENV`)."""
    entry = None if _probe_setting() == "refresh" else load_cache(path).get(key)
    if isinstance(entry, dict) and entry.get("choice") in ("float32", "mixed_bfloat16"):
        detail = _fmt_figures(entry["figures"]) if entry.get("figures") else entry.get("reason")
        log(f"precision auto: {entry['choice']} (cached probe of {entry.get('date', '?')}: "
            f"{detail}; {path})")
        return entry["choice"]
    return None


def _store_or_warn(path, key, entry, log):
    """Stores `entry` under `key` in the cache; a failed write is logged, not raised."""
    try:
        store_entry(path, key, entry)
    except OSError as e:
        log(f"precision auto: cannot write the cache {path}: {e}")


def _probe_setting():
    return os.environ.get(PROBE_ENV, "").strip().lower()


def _rule(gpus, allow_probe, log):
    """The choice where no measurement is needed (GPUs, CPUs without bfloat16,
    the probe switched off), else None."""
    caps = gpu_compute_capabilities() if gpus is None else [
        tuple(c) if c is not None else None for c in gpus]
    if caps:
        ok = all(c is not None and c >= BF16_MIN_COMPUTE_CAPABILITY for c in caps)
        choice = "mixed_bfloat16" if ok else "float32"
        shown = ", ".join("?" if c is None else "%d.%d" % c for c in caps)
        log(f"precision auto: {choice} (GPU compute capability {shown}; bfloat16 needs >= 8.0)")
        return choice
    flags = cpu_flags()
    if not flags & set(_BF16_FLAGS):
        log("precision auto: float32 (this CPU has no bfloat16 instructions)")
        return "float32"
    if not allow_probe or _probe_setting() in ("0", "off", "false", "no"):
        choice = _no_probe_rule(flags)
        log(f"precision auto: {choice} (no probe; bfloat16 on CPUs with AMX tiles only)")
        return choice
    return None


def _measure(spec, probe, model_builder, timeout):
    """The cache entry of one measurement (the AMX rule if it fails)."""
    start = time.perf_counter()
    try:
        if probe is not None:
            figures = probe(**spec)
        elif model_builder is not None:
            figures = probe_builder(model_builder,
                                    **{k: v for k, v in spec.items() if k != "arch"})
        else:
            figures = probe_subprocess(timeout=timeout, **spec)
        choice = decide(figures)
        reason = (f"measured: bfloat16 {'is' if choice == 'mixed_bfloat16' else 'is not'} "
                  f">= {SPEEDUP_MARGIN:.2f}x faster with no more CPU")
    except Exception as e:  # noqa: BLE001 - a failed probe must not stop training
        figures = None
        choice = _no_probe_rule(cpu_flags())
        reason = f"probe failed ({type(e).__name__}: {str(e)[:200]}); AMX rule"
    return {"choice": choice, "figures": figures, "reason": reason,
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "probe_s": round(time.perf_counter() - start, 1)}


# ------------------------------------------------------ emulated bfloat16
def emulated_bf16_warning(precision, *, flags=None, gpus=None):
    """The one-line warning for training in `precision` here, or None.

    Only mixed_bfloat16 on a CPU whose flags are known and hold no bfloat16
    instructions, with no GPU: oneDNN emulates bfloat16 there, slower than
    float32. `flags` and `gpus` replace `cpu_flags()` and
    `gpu_compute_capabilities()` (tests).
    """
    if precision != "mixed_bfloat16":
        return None
    flags = cpu_flags() if flags is None else set(flags)
    if not flags or flags & set(_BF16_FLAGS):
        return None
    if gpu_compute_capabilities() if gpus is None else gpus:
        return None
    return (f"warning: bfloat16 is emulated on this CPU ({cpu_model()}: no avx512_bf16, "
            "amx_bf16 or bf16 instructions), so mixed_bfloat16 is slower than float32 here: "
            f"a step took {EMULATED_BF16_SLOWDOWN:.1f}x float32's CPU time when measured "
            f"({EMULATED_BF16_MEASURED}); --precision float32 or auto trains faster")


def warn_if_emulated(precision, **kwargs):
    """Prints `emulated_bf16_warning(precision, **kwargs)` on stderr, if any; returns it."""
    message = emulated_bf16_warning(precision, **kwargs)
    if message:
        print(message, file=sys.stderr, flush=True)
    return message


# --------------------------------------------------------- float32 logits
def float32_logits(model_or_tensor, name=None):
    """Float32 outputs under mixed precision, for a tensor or a model.

    Args:
        model_or_tensor: a Keras tensor (e.g. the logits while building a
            functional model), or a functional / Sequential Keras model.
        name: the name of the added `Activation("linear", dtype="float32")`
            layer (default `"<name>_float32"` / `"logits_float32"`).

    Returns:
        For a tensor, the float32 tensor. For a model, the same model if its
        outputs are float32 already, else a new `keras.Model` over the same
        layers (shared weights) whose outputs pass through that layer; the
        layer adds no weights, so parameter counts do not change.
    """
    import keras

    def cast(tensor, layer_name):
        return keras.layers.Activation("linear", dtype="float32", name=layer_name)(tensor)

    if isinstance(model_or_tensor, keras.Model):
        model = model_or_tensor
        outputs = model.outputs
        if all(keras.backend.standardize_dtype(t.dtype) == "float32" for t in outputs):
            return model
        new = [cast(t, name or f"{model.name}_float32" + (f"_{i}" if len(outputs) > 1 else ""))
               if keras.backend.standardize_dtype(t.dtype) != "float32" else t
               for i, t in enumerate(outputs)]
        inputs = model.inputs if len(model.inputs) > 1 else model.inputs[0]
        return keras.Model(inputs, new if len(new) > 1 else new[0], name=model.name)
    return cast(model_or_tensor, name or "logits_float32")


# ------------------------------------------------------------------- main
def _main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m patchup_tf.app.precision",
        description="Resolve --precision auto on this machine (and print the figures).")
    parser.add_argument("--arch", default="preactresnet18")
    parser.add_argument("--batch_size", type=int, default=100)
    parser.add_argument("--num_classes", type=int, default=10)
    parser.add_argument("--refresh", action="store_true", help="measure again")
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:  # the probe's own process
        figures = _probe_spec(json.loads(args.probe))
        with open(args.out, "w") as f:
            json.dump(figures, f)
        return 0
    if args.refresh:
        os.environ[PROBE_ENV] = "refresh"
    # The trainer's oneDNN default (`patchup_tf.app.cli.process_settings`), so this
    # program shows and fills the cache entry the trainer reads.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    print(resolve_precision("auto", arch=args.arch, batch_size=args.batch_size,
                            num_classes=args.num_classes))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
