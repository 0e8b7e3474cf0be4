"""The trainer's command line: the PyTorch original's flags, the paper's defaults, names.

Pure parsing: nothing here builds a model or reads data.
"""

import os
import subprocess
import sys

import pytest

from patchup_tf.app.experiment import config as flags
from patchup_tf.methods import METHODS, NUM_POSITIONS, PAPER_DEFAULTS, Method
from tests.helpers.trainer import ORIGINAL_COMMANDS, REPO, original_tokens, resolve


def parse(argv):
    args = flags.build_parser().parse_args(argv)
    method = flags.resolve_method(args)
    return args, method, flags.method_options(args, method)


def resolved(argv):
    """The method's effective options (flags over the paper's defaults)."""
    _, method, options = parse(argv)
    return method, Method(method, **options).options


# ------------------------------------------- the PyTorch original's commands
def test_original_commands_are_the_readmes_lines():
    """The 18 README lines as written: one `python main.py` command each,
    with the README's placeholders, every training method covered."""
    assert len(ORIGINAL_COMMANDS) == 18
    methods = set()
    for label, command in ORIGINAL_COMMANDS.items():
        assert command.startswith("python main.py --dataset "), label
        assert command.endswith(" --job_id <JobID>"), label
        assert "\n" not in command and "  " not in command, label
        assert ("<X>" in command) == label.startswith(("preact", "fgsm")), label
        train = command.split("--train ")[1].split()[0]
        methods.add(train)
        if train == "patchup":
            train = command.split("--patchup_type ")[1].split()[0] + "_patchup"
        assert label.split("_", 1)[1] == train, (label, train)
    assert methods == {"vanilla", "mixup", "manifold_mixup", "cutout", "cutmix", "dropblock",
                       "patchup"}


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "svhn"])
@pytest.mark.parametrize("arch", ["preactresnet18", "preactresnet34"])
@pytest.mark.parametrize("label", sorted(ORIGINAL_COMMANDS))
def test_every_original_command_resolves(label, arch, dataset):
    argv = original_tokens(label, arch=arch, dataset=dataset)
    args, config = resolve(argv)
    method, options = config["method"], config["method_options"]
    Method(method, **options)  # the options are valid for the method
    readme_dataset = "cifar100" if label.startswith("affine") else "cifar10"
    assert args.dataset == (readme_dataset if dataset == "cifar10" else dataset)
    assert args.job_id == "1"
    assert args.arch == ("wrn28_10" if "wrn" in label or "affine" in label else arch)
    expected_method = {"soft_patchup": "soft_patchup", "hard_patchup": "hard_patchup",
                       "manifold_mixup": "manifold_mixup", "cutmix": "cutmix", "cutout": "cutout",
                       "mixup": "mixup", "dropblock": "dropblock", "vanilla": "vanilla"}
    assert method == next(v for k, v in expected_method.items() if label.endswith(k))
    assert config["epochs"] == (400 if args.arch.startswith("wrn") else 2000)
    assert config["schedule"] == ([200, 300] if args.arch.startswith("wrn") else [500, 1000, 1500])
    assert config["step_factors"] == [0.1] * len(config["schedule"])
    assert (args.learning_rate, args.momentum, args.decay) == (0.1, 0.9, 0.0001)
    assert args.batch_size == 100
    assert config["experiment_dir"].startswith(args.root_dir)
    assert config["experiment_dir"].endswith("_job_id_1")


def test_original_flag_values_reach_the_method():
    _, config = resolve(original_tokens("preact_soft_patchup"))
    assert config["method_options"] == {"alpha": 2.0, "gamma": 0.75, "patchup_prob": 1.0,
                                        "block_size": 7, "loss": "bce"}
    _, config = resolve(original_tokens("preact_dropblock"))
    assert config["method_options"] == {"keep_prob": 0.9, "block_size": 7, "dropblock_all": True,
                                        "loss": "bce"}
    _, config = resolve(original_tokens("preact_cutmix"))
    assert config["method_options"]["cutmix_prob"] == 0.4
    _, config = resolve(original_tokens("preact_cutout", dataset="svhn"))
    assert config["method_options"]["cutout"] == 20
    _, config = resolve(original_tokens("wrn_cutout"))
    assert config["method_options"]["cutout"] == 8


def test_string_and_bare_booleans():
    args, _, _ = parse(["--train", "dropblock", "--drop_block_all", "True", "--fsgm_attack", "True"])
    assert args.drop_block_all is True and args.fsgm_attack is True
    args, _, options = parse(["--train", "dropblock", "--drop_block_all", "False"])
    assert args.drop_block_all is False and options["dropblock_all"] is False
    # The affine command's bare `--affine_test`, followed by another flag.
    args, _, _ = parse(original_tokens("affine_soft_patchup"))
    assert args.affine_test is True and args.affine_path == "./data/test/affine/"
    args, _, _ = parse(["--affine_test"])
    assert args.affine_test is True
    args, _, _ = parse([])
    assert (args.affine_test, args.fsgm_attack, args.checkpoint) == (False, False, False)
    for spelling in ("true", "1", "yes"):
        assert parse(["--checkpoint", spelling])[0].checkpoint is True
    with pytest.raises(SystemExit) as e:
        parse(["--fsgm_attack", "maybe"])
    assert e.value.code == 2


def test_unset_drop_block_all_is_the_papers_true():
    _, options = resolved(["--train", "dropblock"])
    assert options["dropblock_all"] is True


# ------------------------------------------------------------ methods
def test_patchup_needs_its_type_and_hard_gets_the_hard_defaults():
    with pytest.raises(flags.FlagError, match="--patchup_type"):
        parse(["--train", "patchup"])
    method, options = resolved(["--train", "patchup", "--patchup_type", "hard"])
    assert method == "hard_patchup"
    assert (options["gamma"], options["patchup_prob"]) == (0.5, 0.7)
    assert (options["alpha"], options["block_size"], options["k"]) == (2.0, 7, 2)
    method, options = resolved(["--train", "patchup", "--patchup_type", "soft"])
    assert method == "soft_patchup"
    assert (options["gamma"], options["patchup_prob"]) == (0.75, 1.0)
    # Flags override the defaults.
    _, options = resolved(["--train", "patchup", "--patchup_type", "hard", "--gamma", "0.3",
                           "--patchup_prob", "0.9"])
    assert (options["gamma"], options["patchup_prob"]) == (0.3, 0.9)


@pytest.mark.parametrize("method", METHODS)
def test_method_short_form(method):
    got, options = resolved(["--method", method])
    assert got == method
    for key, value in PAPER_DEFAULTS[method].items():
        if not (key == "cutout"):  # cutout's default depends on arch/dataset
            assert options[key] == value


def test_method_and_train_agree_or_fail():
    assert parse(["--method", "mixup", "--train", "mixup"])[1] == "mixup"
    assert parse(["--method", "hard_patchup", "--train", "patchup",
                  "--patchup_type", "hard"])[1] == "hard_patchup"
    assert parse(["--method", "hard_patchup", "--patchup_type", "hard"])[1] == "hard_patchup"
    for argv in (["--method", "mixup", "--train", "cutmix"],
                 ["--method", "soft_patchup", "--train", "patchup", "--patchup_type", "hard"],
                 ["--method", "soft_patchup", "--patchup_type", "hard"],
                 ["--train", "mixup", "--patchup_type", "soft"]):
        with pytest.raises(flags.FlagError):
            parse(argv)
    assert parse([])[1] == "vanilla"


def test_block_flags_map_to_their_method():
    _, _, options = parse(["--train", "patchup", "--patchup_type", "soft", "--patchup_block", "5"])
    assert options["block_size"] == 5
    _, _, options = parse(["--train", "dropblock", "--drop_block", "3"])
    assert options["block_size"] == 3
    _, _, options = parse(["--train", "mixup"])
    assert options == {"loss": "bce"}


@pytest.mark.parametrize("argv, unused", [
    (["--train", "patchup", "--patchup_type", "soft", "--drop_block", "3"], "--drop_block"),
    (["--train", "dropblock", "--patchup_block", "5"], "--patchup_block"),
    (["--method", "mixup", "--gamma", "0.5"], "--gamma"),
    (["--method", "vanilla", "--alpha", "1.0"], "--alpha"),
    (["--method", "cutmix", "--k", "2"], "--k"),
    (["--method", "cutout", "--cutmix_prob", "0.5"], "--cutmix_prob"),
])
def test_flags_the_method_does_not_use_are_refused(argv, unused):
    # The PyTorch original ignores them silently; a typo would train the wrong thing.
    with pytest.raises(flags.FlagError, match=f"{unused} is not used by --method"):
        parse(argv)


@pytest.mark.parametrize("argv, size", [
    (["--train", "cutout"], 16),
    (["--train", "cutout", "--arch", "preactresnet34"], 16),
    (["--train", "cutout", "--arch", "wrn28_10"], 8),
    (["--train", "cutout", "--arch", "wrn28_2"], 8),
    (["--train", "cutout", "--dataset", "svhn"], 20),
    (["--train", "cutout", "--dataset", "svhn", "--arch", "wrn28_10"], 20),
    (["--train", "cutout", "--cutout", "12", "--dataset", "svhn"], 12),
])
def test_cutout_default_size(argv, size):
    assert parse(argv)[2]["cutout"] == size


def test_flags_and_methods_share_one_table():
    # One definition (patchup_tf.rules, TF-free) serves both modules.
    assert flags.METHODS is METHODS
    assert flags.PAPER_DEFAULTS is PAPER_DEFAULTS


# ------------------------------------------------------------ schedule
@pytest.mark.parametrize("arch, epochs, schedule", [
    ("preactresnet18", 2000, [500, 1000, 1500]),
    ("preactresnet34", 2000, [500, 1000, 1500]),
    ("wrn28_10", 400, [200, 300]),
    ("wrn28_2", 400, [200, 300]),
])
def test_schedule_defaults_by_arch(arch, epochs, schedule):
    args = flags.build_parser().parse_args(["--arch", arch])
    assert flags.resolve_schedule(args) == (epochs, schedule, [0.1] * len(schedule))


def test_schedule_flags():
    args = flags.build_parser().parse_args(["--epochs", "10", "--schedule", "3", "6",
                                            "--step_factors", "0.5", "0.2"])
    assert flags.resolve_schedule(args) == (10, [3, 6], [0.5, 0.2])
    args = flags.build_parser().parse_args(["--schedule", "3", "6"])
    assert flags.resolve_schedule(args)[2] == [0.1, 0.1]
    for argv, match in ((["--schedule", "1", "2", "--step_factors", "0.1"], "one factor"),
                        (["--schedule", "5", "2", "--step_factors", "0.1", "0.1"], "ascending"),
                        (["--epochs", "0"], "--epochs"), (["--batch_size", "0"], "--batch_size")):
        with pytest.raises(flags.FlagError, match=match):
            flags.resolve_schedule(flags.build_parser().parse_args(argv))


# ------------------------------------------------------------ values
@pytest.mark.parametrize("argv, flag", [
    (["--train", "patchup", "--patchup_type", "soft", "--gamma", "1.5"], "--gamma"),
    (["--train", "patchup", "--patchup_type", "soft", "--gamma", "0"], "--gamma"),
    (["--train", "patchup", "--patchup_type", "hard", "--patchup_prob", "1.2"], "--patchup_prob"),
    (["--train", "patchup", "--patchup_type", "soft", "--k", "7"], "--k"),
    (["--train", "dropblock", "--k", "0"], "--k"),
    (["--train", "manifold_mixup", "--k", "-1"], "--k"),
    (["--train", "patchup", "--patchup_type", "soft", "--patchup_block", "6"], "--patchup_block"),
    (["--train", "dropblock", "--drop_block", "0"], "--drop_block"),
    (["--train", "dropblock", "--keep_prob", "0"], "--keep_prob"),
    (["--train", "cutmix", "--cutmix_prob", "-0.1"], "--cutmix_prob"),
    (["--train", "cutout", "--cutout", "-1"], "--cutout"),
    (["--train", "patchup", "--patchup_type", "soft", "--alpha", "0"], "--alpha"),
    (["--train", "mixup", "--alpha", "inf"], "--alpha"),
    (["--learning_rate", "0"], "--learning_rate"),
    (["--learning_rate", "nan"], "--learning_rate"),
    (["--decay", "-1"], "--decay"),
    (["--labels_per_class", "0"], "--labels_per_class"),
    (["--valid_labels_per_class", "0"], "--valid_labels_per_class"),
    (["--seed", "-1"], "--seed"),
])
def test_out_of_range_values_name_their_flag(argv, flag):
    args, method, options = parse(argv)
    with pytest.raises(flags.FlagError, match=flag):
        flags.check_values(args, method, options)


def test_check_values_agrees_with_method():
    """What the fast check accepts, Method accepts (and vice versa) at the edges."""
    cases = [("gamma", 1.0), ("gamma", 1e-9), ("patchup_prob", 0.0), ("patchup_prob", 1.0),
             ("k", 0), ("k", 4), ("block_size", 1), ("block_size", 31), ("alpha", 1e-3)]
    for key, value in cases:
        flag = {"block_size": "--patchup_block"}.get(key, f"--{key}")
        args, method, options = parse(["--method", "soft_patchup", flag, str(value)])
        flags.check_values(args, method, options)
        Method(method, **options)


# ------------------------------------------------------------ names
def test_experiment_name_has_the_job_id_and_the_settings():
    _, config = resolve(original_tokens("preact_hard_patchup", job_id="J123"))
    name = os.path.basename(config["experiment_dir"])
    assert name.endswith("_job_id_J123")
    for part in ("cifar10", "preactresnet18", "patchup", "hard", "eph_2000", "gamma_0.5",
                 "patchup_prob_0.7", "patchup_block_7", "k_2", "lr_0.1"):
        assert part in name
    _, other = resolve(original_tokens("preact_hard_patchup", job_id="J124"))
    assert other["experiment_dir"] != config["experiment_dir"]


def test_same_run_same_name_other_settings_other_name():
    def name(argv):
        args, method, _ = parse(argv)
        return flags.experiment_name(args, method, flags.resolve_schedule(args)[0])

    hard = ["--train", "patchup", "--patchup_type", "hard"]
    assert name(hard) == name(hard + ["--gamma", "0.5", "--patchup_prob", "0.7"])
    assert name(hard) == name(["--method", "hard_patchup"])
    assert name(hard) != name(hard + ["--patchup_prob", "0.5"])
    assert name(hard) != name(hard + ["--patchup_block", "5"])
    assert name(["--train", "dropblock"]) == name(["--train", "dropblock", "--drop_block_all",
                                                   "True"])
    assert name(["--train", "dropblock"]) != name(["--train", "dropblock", "--keep_prob", "0.8"])
    assert name(["--train", "cutout"]) != name(["--train", "cutout", "--cutout", "8"])
    assert name(["--train", "mixup"]) != name(["--train", "mixup", "--loss", "ce"])
    assert name(["--seed", "1"]) != name(["--seed", "2"])


# ------------------------------------------------------------ speed
def test_import_patchup_tf_registers_what_load_model_needs(tmp_path):
    """A `.keras` file of a MixingModel loads in a fresh process after a bare
    `import patchup_tf` (no submodule imported by hand)."""
    from patchup_tf.models import build

    path = str(tmp_path / "m.keras")
    build("wrn28_2", 10, "soft_patchup", seed=0).save(path)  # fused BatchNorm layers too
    code = (
        "import keras, patchup_tf\n"
        f"m = keras.models.load_model({path!r})\n"
        "print(type(m).__name__, m.method.name)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-2:] == ["MixingModel", "soft_patchup"]


def test_the_extra_flags():
    args, method, _ = parse([])
    assert (args.batch_size, args.seed, args.mixed_precision, args.strategy) == (100, 0, False,
                                                                                "default")
    assert method == "vanilla"
    args, method, _ = parse(["--method", "cutmix", "--batch_size", "64", "--seed", "7",
                             "--mixed_precision", "--strategy", "mirrored"])
    assert (method, args.batch_size, args.seed, args.mixed_precision, args.strategy) == (
        "cutmix", 64, 7, True, "mirrored")
    assert parse(["--mixed_precision", "False"])[0].mixed_precision is False
    # The last occurrence of a flag wins (the tests append overrides to the original lines).
    assert parse(["--epochs", "2000", "--epochs", "1"])[0].epochs == 1


def test_pairing_flag_reaches_the_method_and_the_experiment_name():
    assert resolved(["--method", "soft_patchup"])[1]["pairing"] == "replica"
    assert resolved(["--method", "mixup", "--pairing", "global"])[1]["pairing"] == "global"
    config = flags.RunConfig.from_argv(["--dataset", "digits", "--method", "cutmix",
                                        "--pairing", "global"])
    assert config.method_options["pairing"] == "global"
    assert "_pairing_global" in config.name
    default = flags.RunConfig.from_argv(["--dataset", "digits", "--method", "cutmix"])
    assert "pairing" not in default.name  # the default keeps the reference's folder name
    with pytest.raises(SystemExit) as exit_info:
        flags.build_parser().parse_args(["--method", "mixup", "--pairing", "all"])
    assert exit_info.value.code == 2
