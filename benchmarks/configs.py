"""What to time: one configuration per (impl, arch, method, precision, XLA,
BatchNorm kind, input, Keras backend, environment variant), the presets, the
checks and what a backend cannot run."""

import itertools

from patchup_tf.app.constants import PRECISIONS
from patchup_tf.rules import METHODS, check_choice, invalid

IMPL = "patchup_tf"
TORCH_IMPL = "torch_original"
DEFAULT_METHODS = ("vanilla", "soft_patchup", "hard_patchup", "manifold_mixup")
INPUTS = ("batches", "trainer")
XLA = ("default", "off", "on")  # each backend's default step mode, uncompiled, XLA-compiled
BACKENDS = ("tensorflow", "jax", "torch")  # Keras backends (`KERAS_BACKEND`)
# What `--xla default` means per backend, what a user gets from `compile()`:
# TensorFlow's `tf.function`, JAX compiled, PyTorch eager.
DEFAULT_XLA = {"tensorflow": False, "jax": True, "torch": False}
TINY = {"methods": ("vanilla", "soft_patchup"), "precisions": ("float32",), "xla": ("off",),
        "batch_size": 8, "steps": 1, "warmup": 1, "windows": 2, "pipeline_batches": 5,
        "synthetic_images": 512}
"""`--tiny`, the CI smoke run (the full run's settings: `benchmarks.run.DEFAULTS`)."""


def make_config(arch="preactresnet18", method="vanilla", precision="float32", xla=False,
                batchnorm="fused", input="batches", impl=IMPL, variant="", backend="tensorflow"):
    """One configuration to time (`variant`: its worker's environment)."""
    return {"impl": impl, "arch": arch, "method": method, "precision": precision,
            "xla": bool(xla), "batchnorm": batchnorm, "input": input, "variant": variant,
            "backend": backend}


def config_label(c):
    """`impl/arch/method/precision/xla=..[/bn=../in=..][/backend unless TF][/variant]`."""
    ours, backend = c.get("impl", IMPL) == IMPL, c.get("backend", "tensorflow")
    parts = [c.get("impl", IMPL), c.get("arch", "?"), c.get("method", "?"),
             c.get("precision", "?"), "xla=" + ("on" if c.get("xla") else "off")]
    parts += [f"bn={c.get('batchnorm', 'fused')}", f"in={c.get('input', 'batches')}"] * ours
    return "/".join(parts + [backend] * (ours and backend != "tensorflow")
                    + [c["variant"]] * bool(c.get("variant")))


def error_text(e):
    """`Type: the message's most telling line` (XLA's names the unsupported op)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    telling = [line for line in lines
               if "unsupported operations" in line or "No registered" in line]
    return f"{type(e).__name__}: {(telling or lines or [''])[0][:400]}"


def env_variants(texts):
    """`[(label, env), ...]` for `--worker_env`-style texts (`"K=V,K2=V2"`);
    one plain variant if none."""
    variants = []
    for text in texts:
        env = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            if "=" not in part:
                raise invalid("worker_env", "KEY=VALUE[,KEY=VALUE]", text)
            key, value = part.split("=", 1)
            env[key.strip()] = value.strip()
        variants.append((text, env))
    return variants or [("", {})]


def check_choices(*, methods, precisions, xla, batchnorms, inputs, backends):
    """Raises the Keras-style `ValueError` for the first unknown choice."""
    checks = [("backend", backends, BACKENDS), ("precisions", precisions, PRECISIONS),
              ("methods", methods, METHODS), ("xla", xla, XLA), ("inputs", inputs, INPUTS)]
    if methods:  # models.common imports Keras: only where our configs will run
        from patchup_tf.models.common import BATCHNORMS

        checks.append(("batchnorms", batchnorms, tuple(BATCHNORMS)))
    for name, values, allowed in checks:
        for value in values:
            check_choice(name, value, allowed)


def expand(*, archs, methods, precisions, xla, batchnorms, inputs, backends):
    """Every patchup_tf configuration asked for, backends innermost, then
    methods; a configuration asked for twice (e.g. JAX's default and "on") once."""
    unique = {}
    for arch, precision, x, bn, inp, method, backend in itertools.product(
            archs, precisions, xla, batchnorms, inputs, methods, backends):
        config = make_config(arch, method, precision,
                             DEFAULT_XLA[backend] if x == "default" else x == "on", bn, inp,
                             backend=backend)
        unique.setdefault(config_label(config), config)
    return list(unique.values())


def skip_reason(config):
    """Why `config`'s backend cannot run it, or None."""
    backend = config.get("backend", "tensorflow")
    if backend == "torch" and config.get("xla"):
        return ("MixingModel refuses jit_compile=True on PyTorch (its seeded draws use torch "
                "generators, which torch.compile does not trace)")
    if backend != "tensorflow" and config.get("input") == "trainer":
        return f"the trainer's input stream is tf.data (TensorFlow only), not {backend}"
    return None
