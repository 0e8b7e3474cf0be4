"""The machine and software the numbers come from, and a process's peak
resident memory (standard library only, and `patchup_tf.app.precision`'s
CPU facts, which import no TensorFlow)."""

import contextlib
import datetime
import importlib.metadata
import os
import platform
import shutil
import subprocess

from patchup_tf.app.precision import cpu_count, cpu_flags, cpu_model

# The ISA flags that decide the kernels (TensorFlow turns oneDNN on by itself only
# with AVX-512 VNNI/BF16, AVX-VNNI or AMX); an absent flag means the CPU lacks it.
CPU_FLAGS_SHOWN = ("avx2", "fma", "avx_vnni", "avx512f", "avx512_vnni", "avx512_bf16",
                   "amx_bf16", "amx_tile", "avx512_fp16")
ENV_KEYS = ("TF_ENABLE_ONEDNN_OPTS", "OMP_NUM_THREADS", "OMP_WAIT_POLICY", "TF_XLA_FLAGS",
            "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "ONEDNN_MAX_CPU_ISA",
            "CUDA_VISIBLE_DEVICES", "KERAS_BACKEND", "TF_DETERMINISTIC_OPS")


def _version(name):
    """An installed distribution's version, None if absent (nothing imported)."""
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        return importlib.metadata.version(name)


def env_settings():
    """The environment variables that change speed, as set here."""
    return {k: os.environ[k] for k in ENV_KEYS if k in os.environ}


def machine_info():
    """The machine, the library versions and the speed-relevant environment."""
    smi = shutil.which("nvidia-smi")
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "cpu_flags": [f for f in CPU_FLAGS_SHOWN if f in cpu_flags()],
        "cores": cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        # Each GPU's name, driver, memory and max SM clock.
        "gpus": smi and subprocess.run(
            [smi, "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
             "--format=csv,noheader"], capture_output=True, text=True, timeout=30).stdout.strip(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {name: _version(name) for name in ("tensorflow", "keras", "jax", "torch",
                                                       "numpy")},
        "env": env_settings(),
        # TF_ENABLE_ONEDNN_OPTS as TensorFlow will read it here ("unset": TensorFlow's own
        # choice, which is off on a CPU without the flags above).
        "onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset"),
        "loadavg_start": [round(v, 2) for v in os.getloadavg()],
    }


def peak_rss_mb():
    """This process's peak resident memory so far (VmHWM, Linux), in MiB, or None."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024.0 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None


def reset_peak_rss():
    """Resets this process's VmHWM to its current RSS (Linux >= 4.0), best effort."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")
