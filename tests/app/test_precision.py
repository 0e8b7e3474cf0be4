"""`--precision auto` from evidence (`patchup_tf.app.precision`) and float32 logits."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from patchup_tf.app import precision
from patchup_tf.models import build
from tests.test_mixing import np_bce_on_softmax

BF16_FASTER = {"float32": {"wall_s": 2.0, "cpu_s": 3.0},
               "mixed_bfloat16": {"wall_s": 1.0, "cpu_s": 1.8}}
BF16_SLOWER = {"float32": {"wall_s": 1.0, "cpu_s": 2.0},
               "mixed_bfloat16": {"wall_s": 1.5, "cpu_s": 3.0}}


class CountingProbe:
    def __init__(self, figures=BF16_FASTER, error=None):
        self.figures, self.error, self.calls = figures, error, []

    def __call__(self, **spec):
        self.calls.append(spec)
        if self.error:
            raise self.error
        return self.figures


@pytest.fixture
def cpu(monkeypatch, tmp_path):
    """A CPU with AMX bf16 (so `auto` measures) and a private cache folder."""
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512f", "avx512_bf16", "amx_bf16"})
    monkeypatch.setattr(precision, "cpu_model", lambda: "Test CPU 9000")
    monkeypatch.delenv(precision.PROBE_ENV, raising=False)
    monkeypatch.setenv(precision.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache" / precision.CACHE_FILE


def resolve(**kwargs):
    logs = []
    kwargs.setdefault("gpus", [])
    choice = precision.resolve_precision("auto", log=logs.append, **kwargs)
    return choice, logs


# ------------------------------------------------------------------ rules
@pytest.mark.parametrize("requested", ["float32", "mixed_bfloat16", "mixed_float16"])
def test_explicit_precision_is_returned_as_is(requested):
    assert precision.resolve_precision(requested, probe=CountingProbe(error=AssertionError)) \
        == requested


def test_unknown_precision_is_rejected():
    with pytest.raises(ValueError, match="bfloat32"):
        precision.resolve_precision("bfloat32")


@pytest.mark.parametrize("caps, expected", [
    ([(9, 0)], "mixed_bfloat16"),
    ([(8, 0)], "mixed_bfloat16"),
    ([(8, 6), (9, 0)], "mixed_bfloat16"),
    ([(7, 5)], "float32"),
    ([(9, 0), (7, 0)], "float32"),  # every GPU must support bf16
    ([None], "float32"),
])
def test_gpu_rule(cpu, caps, expected):
    probe = CountingProbe(error=AssertionError("no probe on GPUs"))
    choice, logs = resolve(gpus=caps, probe=probe)
    assert choice == expected and probe.calls == []
    assert "compute capability" in logs[0]
    assert not os.path.exists(cpu)


@pytest.mark.parametrize("cap, expected", [((9, 0), "mixed_bfloat16"), ((7, 0), "float32")])
def test_gpu_rule_from_a_mocked_device_list(cpu, monkeypatch, cap, expected):
    fake = tf.config.PhysicalDevice(name="/physical_device:GPU:0", device_type="GPU")
    monkeypatch.setattr(tf.config, "list_physical_devices",
                        lambda kind=None: [fake] if kind == "GPU" else [])
    monkeypatch.setattr(tf.config.experimental, "get_device_details",
                        lambda device: {"device_name": "Fake", "compute_capability": cap})
    assert precision.gpu_compute_capabilities() == [cap]
    probe = CountingProbe(error=AssertionError("no probe on GPUs"))
    assert precision.resolve_precision("auto", probe=probe, log=lambda m: None) == expected
    assert probe.calls == []


def test_cpu_without_bf16_instructions_is_float32_without_a_probe(cpu, monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "avx512f"})
    probe = CountingProbe(error=AssertionError("no probe"))
    choice, logs = resolve(probe=probe)
    assert choice == "float32" and probe.calls == [] and "no bfloat16" in logs[0]


@pytest.mark.parametrize("flags, expected", [({"amx_bf16", "avx512_bf16"}, "mixed_bfloat16"),
                                             ({"avx512_bf16"}, "float32")])
def test_probe_switched_off_uses_the_amx_rule(cpu, monkeypatch, flags, expected):
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    monkeypatch.setenv(precision.PROBE_ENV, "0")
    probe = CountingProbe(error=AssertionError("no probe"))
    assert resolve(probe=probe)[0] == expected and probe.calls == []
    monkeypatch.delenv(precision.PROBE_ENV)
    assert resolve(probe=probe, allow_probe=False)[0] == expected and probe.calls == []


@pytest.mark.parametrize("figures, expected", [
    (BF16_FASTER, "mixed_bfloat16"),
    (BF16_SLOWER, "float32"),
    # faster by less than the margin
    ({"float32": {"wall_s": 1.0, "cpu_s": 2.0}, "mixed_bfloat16": {"wall_s": 0.97, "cpu_s": 1.9}},
     "float32"),
    # faster in wall-clock time but more CPU
    ({"float32": {"wall_s": 2.0, "cpu_s": 2.0}, "mixed_bfloat16": {"wall_s": 1.0, "cpu_s": 2.2}},
     "float32"),
])
def test_decide(figures, expected):
    assert precision.decide(figures) == expected


# ------------------------------------------------------------------ cache
def test_probe_result_is_cached_and_reused(cpu):
    probe = CountingProbe(BF16_FASTER)
    choice, logs = resolve(arch="wrn28_2", batch_size=64, probe=probe)
    assert choice == "mixed_bfloat16" and len(probe.calls) == 1
    assert probe.calls[0]["arch"] == "wrn28_2" and probe.calls[0]["batch_size"] == 64
    # the figures are printed when measured
    assert any("float32 2.000 s/step" in line for line in logs)
    with open(cpu) as f:
        data = json.load(f)
    (entry,) = data["entries"].values()
    assert entry["choice"] == "mixed_bfloat16" and entry["figures"] == BF16_FASTER
    assert entry["key"]["cpu"] == "Test CPU 9000" and entry["key"]["batch_size"] == 64
    assert entry["key"]["tensorflow"] == tf.__version__

    # Second call: no probe, same answer, from the cache.
    choice, logs = resolve(arch="wrn28_2", batch_size=64, probe=probe)
    assert choice == "mixed_bfloat16" and len(probe.calls) == 1
    assert "cached" in logs[0]

    # Another batch size or arch is another key: measured once more.
    assert resolve(arch="wrn28_2", batch_size=128, probe=CountingProbe(BF16_SLOWER))[0] == "float32"
    assert resolve(arch="wrn28_2", batch_size=128, probe=probe)[0] == "float32"
    assert len(probe.calls) == 1
    with open(cpu) as f:
        assert len(json.load(f)["entries"]) == 2


def test_refresh_measures_again(cpu, monkeypatch):
    assert resolve(probe=CountingProbe(BF16_FASTER))[0] == "mixed_bfloat16"
    monkeypatch.setenv(precision.PROBE_ENV, "refresh")
    probe = CountingProbe(BF16_SLOWER)
    assert resolve(probe=probe)[0] == "float32" and len(probe.calls) == 1
    monkeypatch.delenv(precision.PROBE_ENV)
    assert resolve(probe=CountingProbe(error=AssertionError))[0] == "float32"


@pytest.mark.parametrize("garbage", [b"{not json", b"", b"\xff\xfe\x00", b"[1, 2, 3]",
                                     b'{"version": 1, "entries": 5}', b'{"version": 99}'])
def test_corrupt_cache_is_ignored_and_rewritten(cpu, garbage):
    os.makedirs(os.path.dirname(cpu))
    with open(cpu, "wb") as f:
        f.write(garbage)
    probe = CountingProbe(BF16_FASTER)
    assert resolve(probe=probe)[0] == "mixed_bfloat16" and len(probe.calls) == 1
    with open(cpu) as f:
        data = json.load(f)  # valid again
    assert data["version"] == precision.CACHE_VERSION and len(data["entries"]) == 1
    leftovers = [n for n in os.listdir(os.path.dirname(cpu)) if n.endswith(".tmp")]
    assert leftovers == []
    assert resolve(probe=probe)[0] == "mixed_bfloat16" and len(probe.calls) == 1


def test_cache_write_is_atomic(cpu, monkeypatch):
    assert resolve(probe=CountingProbe(BF16_FASTER))[0] == "mixed_bfloat16"
    with open(cpu) as f:
        before = f.read()

    def broken_dump(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(precision.json, "dump", broken_dump)
    logs = []
    choice = precision.resolve_precision("auto", arch="wrn28_2", gpus=[],
                                         probe=CountingProbe(BF16_SLOWER), log=logs.append)
    assert choice == "float32"  # the decision stands even if the cache cannot be written
    assert any("cannot write" in line for line in logs)
    with open(cpu) as f:
        assert f.read() == before  # the old file is intact
    assert [n for n in os.listdir(os.path.dirname(cpu)) if n.endswith(".tmp")] == []


def test_failed_probe_falls_back_to_the_amx_rule_and_is_cached(cpu):
    probe = CountingProbe(error=RuntimeError("out of memory"))
    choice, logs = resolve(probe=probe)
    assert choice == "mixed_bfloat16" and "probe failed" in logs[-1]
    assert resolve(probe=probe)[0] == "mixed_bfloat16" and len(probe.calls) == 1


def test_real_probe_of_a_model_builder(cpu):
    """The in-process measurement, on a tiny model (both precisions run)."""
    from tests.helpers.tiny import tiny_model

    choice, logs = resolve(model_builder=lambda: tiny_model(),
                           model_name="tiny", batch_size=4, num_classes=4, steps=2)
    assert choice in ("float32", "mixed_bfloat16")
    assert keras.mixed_precision.global_policy().name == "float32"  # restored
    with open(cpu) as f:
        (entry,) = json.load(f)["entries"].values()
    assert entry["key"]["arch"] == "tiny" and entry["choice"] == choice
    for p in ("float32", "mixed_bfloat16"):
        assert entry["figures"][p]["wall_s"] > 0 and entry["figures"][p]["cpu_s"] >= 0
        assert len(entry["figures"][p]["wall_s_steps"]) == 2
    assert any("s/step" in line for line in logs)


def test_real_probe_in_a_subprocess():
    """`probe_subprocess` times a real step of an arch in a fresh process."""
    figures = precision.probe_subprocess(arch="wrn28_2", batch_size=2, steps=1, warmup=1,
                                         timeout=600)
    for p in ("float32", "mixed_bfloat16"):
        assert figures[p]["wall_s"] > 0 and figures[p]["cpu_s"] > 0
    assert precision.decide(figures) in ("float32", "mixed_bfloat16")


# ------------------------------------------------------------ the step timer
def test_time_steps_calls_and_syncs_once_per_window():
    from patchup_tf.app.steptimer import time_steps

    calls, synced = [], []
    timing = time_steps(lambda: calls.append(1) or len(calls), 6, sync=synced.append,
                        steps_per_call=2)
    assert len(calls) == 3 and synced == [3]  # the last call's result, once
    assert timing.wall_s > 0 and timing.cpu_s >= 0
    busy = time_steps(lambda: sum(range(20000)), 4)
    assert busy.cpu_s > 0 and busy.cpu_s <= 4 * busy.wall_s  # per step, this process's CPU
    for steps in (0, 3):
        with pytest.raises(ValueError, match="steps_per_call=2"):
            time_steps(lambda: None, steps, steps_per_call=2)


@pytest.mark.parametrize("through_fit", [False, True])
def test_keras_steps_times_the_train_function(through_fit):
    """`KerasSteps` warms up (fit + one call), then each timed step is one
    `train_function` call (or one whole `fit` call for `through_fit`)."""
    from patchup_tf.app.steptimer import KerasSteps
    from tests.helpers.tiny import tiny_model

    model = tiny_model()
    model.compile(optimizer="sgd")
    x = tf.random.stateless_normal([2, 4, 32, 32, 3], [0, 1])
    y = tf.one_hot(tf.zeros([2, 4], tf.int32), 4)
    steps = KerasSteps(model, tf.data.Dataset.from_tensor_slices((x, y)).repeat(), warmup=2,
                       through_fit=through_fit)
    before = int(model.optimizer.iterations)
    timing = steps.time(3)
    assert int(model.optimizer.iterations) == before + 3
    assert timing.wall_s > 0 and timing.cpu_s > 0
    assert before == (2 if through_fit else 3)  # the warm-up fit (+ the one bound call)


# ------------------------------------------------------- the trainer's auto
def _trainer_precision(monkeypatch, argv, choice="mixed_bfloat16"):
    """The trainer's choice for `argv` (`RunConfig`, then `run`'s `choose_precision`
    with the dataset's class count), `resolve_precision` recorded, not run."""
    from patchup_tf.app.data import NUM_CLASSES
    from patchup_tf.app.experiment import run as experiment
    from patchup_tf.app.experiment.config import RunConfig

    calls = []

    def fake(requested, **kwargs):
        calls.append((requested, kwargs))
        return choice

    monkeypatch.setattr(experiment.precision_lib, "resolve_precision", fake)
    config = RunConfig.from_argv(argv)
    precision = config.precision or experiment.choose_precision(
        config.args, config.experiment_dir, NUM_CLASSES[config.args.dataset])
    return {**config.to_json(), "precision": precision}, calls


@pytest.mark.parametrize("argv, shape, classes, allow", [
    (["--dataset", "digits", "--arch", "wrn28_2", "--batch_size", "50"], (32, 32, 3), 10, True),
    (["--dataset", "cifar100", "--arch", "keras:MobileNetV3Small", "--image_size", "48"],
     (48, 48, 3), 100, True),
    (["--dataset", "cifar10", "--strategy", "multi_worker"], (32, 32, 3), 10, False),
])
def test_trainer_auto_asks_the_evidence_for_its_own_network(monkeypatch, tmp_path, argv, shape,
                                                            classes, allow):
    config, calls = _trainer_precision(
        monkeypatch, [*argv, "--root_dir", str(tmp_path), "--method", "soft_patchup"],
        choice="float32")
    assert config["precision"] == "float32"
    ((requested, kwargs),) = calls
    parsed = dict(zip(argv[::2], argv[1::2]))
    assert requested == "auto"
    assert kwargs["arch"] == parsed.get("--arch", "preactresnet18")
    assert kwargs["batch_size"] == int(parsed.get("--batch_size", 100))
    assert tuple(kwargs["input_shape"]) == shape and kwargs["num_classes"] == classes
    assert kwargs["allow_probe"] is allow  # multi-worker hosts must choose alike


@pytest.mark.parametrize("extra, expected", [(["--precision", "float32"], "float32"),
                                             (["--precision", "mixed_float16"], "mixed_float16"),
                                             (["--mixed_precision", "True"], "mixed_bfloat16")])
def test_trainer_explicit_precision_is_not_probed(monkeypatch, tmp_path, extra, expected):
    config, calls = _trainer_precision(
        monkeypatch, ["--dataset", "digits", "--root_dir", str(tmp_path), *extra])
    assert config["precision"] == expected and calls == []


def test_trainer_auto_keeps_a_resumed_runs_recorded_precision(monkeypatch, tmp_path, capsys):
    """A run resumed with `--precision auto` continues in the precision its
    flags.json recorded, whatever the evidence says now."""
    from patchup_tf.app.experiment.checkpoints import INDEX_FILE

    argv = ["--dataset", "digits", "--root_dir", str(tmp_path)]
    config, calls = _trainer_precision(monkeypatch, argv, choice="mixed_bfloat16")
    assert config["precision"] == "mixed_bfloat16" and len(calls) == 1
    exp = config["experiment_dir"]
    os.makedirs(os.path.join(exp, os.path.dirname(INDEX_FILE)))
    with open(os.path.join(exp, "flags.json"), "w") as f:
        json.dump({**json.loads(json.dumps(config, default=str)), "precision": "float32"}, f)
    # flags.json alone (no committed epoch) is a fresh start: the evidence decides.
    assert _trainer_precision(monkeypatch, argv)[0]["precision"] == "mixed_bfloat16"
    with open(os.path.join(exp, INDEX_FILE), "w") as f:
        f.write('model_checkpoint_path: "epoch-1"\n')
    config, calls = _trainer_precision(monkeypatch, argv, choice="mixed_bfloat16")
    assert config["precision"] == "float32" and calls == []
    assert "float32 (as recorded in" in capsys.readouterr().out


# ------------------------------------------------------ emulated bfloat16
AVX2_ONLY = {"fpu", "sse2", "avx", "avx2", "fma", "f16c"}


@pytest.mark.parametrize("chosen, flags, gpus, warned", [
    ("mixed_bfloat16", AVX2_ONLY, [], True),
    ("mixed_bfloat16", AVX2_ONLY | {"avx512f"}, [], True),  # AVX-512 without its BF16 part
    ("float32", AVX2_ONLY, [], False),
    ("mixed_float16", AVX2_ONLY, [], False),
    ("mixed_bfloat16", AVX2_ONLY | {"avx512f", "avx512_bf16"}, [], False),
    ("mixed_bfloat16", AVX2_ONLY | {"amx_tile", "amx_bf16"}, [], False),
    ("mixed_bfloat16", {"fp", "asimd", "bf16"}, [], False),  # Arm with bf16
    ("mixed_bfloat16", set(), [], False),  # flags unknown (no /proc/cpuinfo): no guess
    ("mixed_bfloat16", AVX2_ONLY, [(8, 0)], False),  # the GPU computes
])
def test_emulated_bf16_warning(monkeypatch, chosen, flags, gpus, warned):
    monkeypatch.setattr(precision, "cpu_model", lambda: "Test CPU 9000")
    message = precision.emulated_bf16_warning(chosen, flags=flags, gpus=gpus)
    assert (message is not None) == warned
    if warned:
        assert "\n" not in message and message.startswith("warning: bfloat16 is emulated")
        ratio = f"{precision.EMULATED_BF16_SLOWDOWN:.1f}x float32's CPU time"
        assert "Test CPU 9000" in message and ratio in message and not ratio.startswith("0.0x")
        assert precision.EMULATED_BF16_MEASURED in message


class _Stop(Exception):
    pass


@pytest.mark.parametrize("extra, flags, warned", [
    (["--precision", "mixed_bfloat16"], AVX2_ONLY, True),
    (["--mixed_precision", "True"], AVX2_ONLY, True),
    (["--precision", "float32"], AVX2_ONLY, False),
    (["--precision", "mixed_bfloat16"], AVX2_ONLY | {"avx512f", "avx512_bf16"}, False),
])
def test_the_trainer_warns_once_at_start_of_emulated_bf16(monkeypatch, tmp_path, capsys,
                                                         extra, flags, warned):
    """The CPU's flags come from `cpu_flags` (faked here); the run stops at its
    first step after the warning."""
    from patchup_tf.app.cli.train import main
    from patchup_tf.app.experiment import run as experiment

    monkeypatch.setattr(precision, "cpu_flags", lambda: set(flags))
    monkeypatch.setattr(experiment, "set_up", lambda args: (_ for _ in ()).throw(_Stop()))
    with pytest.raises(_Stop):
        main(["--dataset", "digits", "--root_dir", str(tmp_path), "--epochs", "1", *extra])
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if "bfloat16 is emulated" in line]
    assert len(lines) == (1 if warned else 0), err
    assert "bfloat16 is emulated" not in out
    if warned:
        assert lines[0].startswith("warning: ") and "x float32's CPU time" in lines[0]


# --------------------------------------------------------- float32 logits
@pytest.fixture
def bf16():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    yield
    keras.mixed_precision.set_global_policy("float32")


def test_paper_models_output_float32_logits_under_bf16(bf16):
    model = build("wrn28_2", 10, "soft_patchup", seed=0)
    assert keras.backend.standardize_dtype(model.outputs[0].dtype) == "float32"
    head = model.get_layer("logits")
    assert head.dtype_policy.name == "float32"
    assert model.get_layer("stem_conv").compute_dtype == "bfloat16"  # the body stays bf16
    x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype("float32")
    assert model(x, training=False).dtype == tf.float32
    assert model.predict(x, verbose=0).dtype == np.float32


def test_loss_is_float32_under_bf16(bf16):
    model = build("wrn28_2", 10, "soft_patchup", seed=0, patchup_prob=1.0)
    seen = []
    loss = model.method.loss

    def recording_loss(logits, *args, **kwargs):
        value = loss(logits, *args, **kwargs)
        seen.append((logits.dtype.name, value.dtype.name))
        return value

    model.method.loss = recording_loss
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, 8).astype("int32")
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert seen and all(s == ("float32", "float32") for s in seen)


def test_loss_under_bf16_is_the_float32_loss_by_value(bf16):
    """The step's loss is NumPy's BCE on the softmax of logits computed in
    float64 from the head's input, to 1e-6 (it is 2e-8 off): the same logits
    rounded to bfloat16 give a loss 2.2e-5 away, 20 times the tolerance."""
    keras.utils.set_random_seed(0)
    model = build("wrn28_2", 10, "vanilla", seed=0)
    seen = []
    loss = model.method.loss

    def recording_loss(logits, *args, **kwargs):
        value = loss(logits, *args, **kwargs)
        seen.append((logits.numpy(), float(value)))
        return value

    model.method.loss = recording_loss
    model.compile(optimizer=keras.optimizers.SGD(0.01), run_eagerly=True)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, 8).astype("int32")
    head = model.get_layer("logits")
    features = keras.Model(model.inputs, head.input)(x, training=True)  # as the step's
    kernel, bias = (w.numpy().astype(np.float64) for w in head.weights)
    expected = tf.cast(features, tf.float64).numpy() @ kernel + bias
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    ((logits, value),) = seen
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)
    targets = np.eye(10, dtype=np.float32)[y]
    assert value == pytest.approx(np_bce_on_softmax(expected, targets), abs=1e-6)
    rounded = tf.cast(tf.cast(expected, tf.bfloat16), tf.float64).numpy()
    assert abs(value - np_bce_on_softmax(rounded, targets)) > 1e-5


def test_exported_model_serves_float32_logits(bf16, tmp_path):
    model = build("wrn28_2", 10, seed=0)
    x = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype("float32")
    model.export(str(tmp_path / "m"), verbose=False)
    loaded = tf.saved_model.load(str(tmp_path / "m"))
    out = loaded.serve(tf.constant(x))
    assert out.dtype == tf.float32
    np.testing.assert_allclose(out.numpy(), model.predict(x, verbose=0), atol=1e-5)


def _tiny_functional():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(5, name="head")(x), name="tiny")


def test_float32_logits_of_a_model(bf16):
    model = _tiny_functional()
    assert keras.backend.standardize_dtype(model.outputs[0].dtype) == "bfloat16"
    fixed = precision.float32_logits(model)
    assert fixed is not model and fixed.name == "tiny"
    assert keras.backend.standardize_dtype(fixed.outputs[0].dtype) == "float32"
    assert {id(v) for v in fixed.weights} == {id(v) for v in model.weights}  # shared
    assert fixed.count_params() == model.count_params()
    x = np.ones((2, 8, 8, 3), "float32")
    out = fixed(x)
    assert out.dtype == tf.float32
    np.testing.assert_allclose(out.numpy(), tf.cast(model(x), tf.float32).numpy())
    assert precision.float32_logits(fixed) is fixed  # already float32


def test_float32_logits_of_a_tensor(bf16):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
    logits = precision.float32_logits(keras.layers.Dense(5)(x))
    model = keras.Model(inputs, logits)
    assert model(np.ones((1, 8, 8, 3), "float32")).dtype == tf.float32
    assert model.layers[-1].name == "logits_float32"
