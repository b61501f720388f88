"""RunConfig validation, TOML reading and flag precedence."""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import tomllib
import typing

import numpy as np
import pytest
import torch

from securefl.config import CentralDPConfig, DPConfig, RunConfig, SecAggConfig
from securefl.data import DATASETS, TrainingDefaults
from securefl.errors import ConfigError
from securefl.models import MODELS, TRAINABLE_MODELS, build_model, check_model_fits


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"dataset": "imagenet"}, "unknown dataset 'imagenet'"),
        ({"model": "vgg"}, "unknown model 'vgg'"),
        ({"partition": "random"}, "unknown partition 'random'"),
        ({"algorithm": "fedprox"}, "unknown algorithm"),
        ({"clients": 0}, "clients 0 < 1"),
        ({"clients": 5, "clients_per_round": 6}, "change `clients_per_round`"),
        ({"fraction": 0.0}, "fraction 0.0 is outside (0, 1]"),
        ({"fraction": 1.5}, "fraction 1.5 is outside (0, 1]"),
        ({"alpha": 0.0}, "0.0 <= 0: use a positive `alpha`"),
        ({"alpha": -1.0}, "-1.0 <= 0: use a positive `alpha`"),
        ({"rounds": 0}, "rounds 0 < 1"),
        ({"lr": 0.0}, "learning rate 0.0 <= 0: use a positive `lr`"),
        ({"lr": -0.1}, "learning rate -0.1 <= 0"),
        ({"clients_per_round": 3, "fraction": 0.5}, "not both"),
        ({"noise_multiplier": 1.0}, "`dp.noise_multiplier` given without `dp`: set `dp`"),
        ({"secagg_bits": 16}, "`secagg.bits` given without `secagg`"),
        ({"clip_norm": 1.0}, "`central_dp.clip_norm` given without `central_dp`"),
        ({"dp": {"delta": 1e-6}, "secagg": {"bits": 16}, "clip_norm": 1.0}, "without `central_dp`"),
        ({"colour": "blue"}, "unknown setting 'colour'"),
        ({"clients": "ten"}, "`clients` must be an integer, not 'ten'"),
        ({"secagg": True, "secagg_threshold": "0.5"}, "`secagg.threshold` must be a number (or left out)"),
        (
            {"secagg": True, "secagg_colluders": 2.0},
            "`secagg.max_colluders` must be an integer (or left out)",
        ),
        ({"secagg": {"bits": "16"}}, "`secagg.bits` must be an integer, not '16'"),
        ({"secagg": True, "active_adversary": "yes"}, "`secagg.active_adversary` must be true or false"),
        ({"secagg": True, "secagg_threshold": float("nan")}, "secagg threshold nan is not a finite number"),
        ({"secagg": True, "secagg_clip": float("inf")}, "secagg clip inf is not a finite number"),
    ],
)
def test_bad_values_raise_config_error_naming_the_knob(values, fragment):
    with pytest.raises(ConfigError) as error:
        RunConfig.from_mapping(values)
    assert fragment in str(error.value)


@pytest.mark.parametrize(
    ("kind", "values", "fragment"),
    [
        (DPConfig, {"noise_multiplier": -0.1}, "noise multiplier -0.1 < 0"),
        (DPConfig, {"max_grad_norm": 0.0}, "max grad norm 0.0 <= 0"),
        (DPConfig, {"delta": 1.0}, "outside (0, 1)"),
        (DPConfig, {"delta": 0.0}, "outside (0, 1)"),
        (DPConfig, {"target_epsilon": 0.0}, "target epsilon 0.0 <= 0"),
        (DPConfig, {"accountant": "moments"}, "unknown accountant"),
        (CentralDPConfig, {"clip_norm": -1.0}, "clip norm -1.0 <= 0"),
        (CentralDPConfig, {"clip_norm": float("inf")}, "clip norm inf is not a finite number"),
        (CentralDPConfig, {"noise_multiplier": float("nan")}, "central noise multiplier nan is not a finite"),
        (CentralDPConfig, {"noise_multiplier": float("inf")}, "central noise multiplier inf is not a finite"),
        (DPConfig, {"noise_multiplier": float("nan")}, "noise multiplier nan is not a finite number"),
        (DPConfig, {"max_grad_norm": float("inf")}, "max grad norm inf is not a finite number"),
        (SecAggConfig, {"bits": 63}, "outside 8..62"),
        (SecAggConfig, {"bits": 7}, "outside 8..62"),
        (SecAggConfig, {"clip": 0.0}, "secagg clip 0.0 <= 0"),
        (SecAggConfig, {"dropout_rate": 1.0}, "outside [0, 1)"),
    ],
)
def test_sub_configs_validate(kind, values, fragment):
    with pytest.raises(ConfigError) as error:
        kind(**values)
    assert fragment in str(error.value)


def test_secagg_threshold_and_neighbors_are_checked_against_clients_per_round():
    with pytest.raises(ConfigError, match="threshold 7 > clients per round 5"):
        RunConfig.from_mapping({"clients": 10, "clients_per_round": 5, "secagg": True, "secagg_threshold": 7})
    with pytest.raises(ConfigError, match="neighbors 5 >= clients per round 5"):
        RunConfig.from_mapping({"clients": 10, "clients_per_round": 5, "secagg": True, "secagg_neighbors": 5})


@pytest.mark.parametrize(
    ("threshold", "clients", "expected"),
    [
        (None, 10, 6),
        (None, 5, 3),
        (0.5, 10, 5),
        (0.66, 10, 7),
        (0.7, 10, 7),
        (4, 10, 4),
        (10, 10, 10),
    ],
)
def test_threshold_fraction_or_count(threshold, clients, expected):
    assert SecAggConfig(threshold=threshold).threshold_count(clients) == expected


def test_toml_keys_are_flag_names_and_flags_override(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('dataset = "digits"\nclients-per-round = 4\nrounds = 3\n\n[dp]\nnoise-multiplier = 0.7\n')
    config = RunConfig.from_toml(path, {"rounds": 5})
    assert (config.dataset, config.clients_per_round, config.rounds) == ("digits", 4, 5)
    assert config.dp == DPConfig(noise_multiplier=0.7)
    assert json.loads(config.to_json())["dp"]["noise_multiplier"] == 0.7


def test_flat_toml_switches_sections_on(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("secagg = true\nsecagg-bits = 24\n")
    assert RunConfig.from_toml(path).secagg == SecAggConfig(bits=24)


@pytest.mark.parametrize(("text", "fragment"), [("rounds = = 3", "not valid TOML"), (None, "does not exist")])
def test_unreadable_toml(tmp_path, text, fragment):
    path = tmp_path / "run.toml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=fragment):
        RunConfig.from_toml(path)


def test_sampled_clients():
    assert RunConfig(clients=20).sampled_clients == 20
    assert RunConfig(clients=20, clients_per_round=7).sampled_clients == 7
    assert RunConfig(clients=20, fraction=0.25).sampled_clients == 5


def test_central_dp_secagg_dropouts_need_fixed_client_sampling():
    """With dropouts, whether a Poisson round reaches the threshold depends on one user's presence
    (sensitivity up to threshold·clip): refused, naming what to use (issue 9, point 8)."""
    base = {"clients": 20, "clients_per_round": 5, "central_dp": True, "secagg": True, "dropout_rate": 0.1}
    with pytest.raises(ConfigError, match="use `central_dp.client_sampling` fixed"):
        RunConfig.from_mapping(base)
    assert RunConfig.from_mapping({**base, "client_sampling": "fixed"}).secagg.dropout_rate == 0.1
    assert RunConfig.from_mapping({**base, "dropout_rate": 0.0}).central_dp.client_sampling == "poisson"
    assert RunConfig.from_mapping({**base, "central_dp": False}).secagg.dropout_rate == 0.1


def _float_fields() -> list[str]:
    """Every field path of RunConfig a user sets whose value is a float (or an optional float)."""
    kinds = {"": RunConfig, "dp.": DPConfig, "central_dp.": CentralDPConfig, "secagg.": SecAggConfig}
    return [
        prefix + name
        for prefix, kind in kinds.items()
        for name, parameter in inspect.signature(kind, eval_str=True).parameters.items()
        if parameter.annotation is float or float in typing.get_args(parameter.annotation)
    ]


@pytest.mark.parametrize("path", _float_fields())
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_non_finite_values_are_refused_naming_the_parameter(path, value):
    """`--dp --noise-multiplier inf` and friends (issue 10): every float parameter refuses ±inf and
    NaN on construction, naming its field path, instead of failing later with a traceback."""
    section, _, name = path.rpartition(".")
    values = {section: {name: value}} if section else {name: value}
    with pytest.raises(ConfigError) as error:
        RunConfig.from_mapping(values)
    assert f"`{path}`" in str(error.value)


def test_negative_seed_is_refused():
    with pytest.raises(ConfigError, match="use `seed` 0 or more"):
        RunConfig(seed=-1)


def _expected_training(dataset: str, model: str, **chosen) -> TrainingDefaults:
    """The reference: the registry's defaults for ``model`` on ``dataset``, with ``chosen`` on top."""
    return dataclasses.replace(DATASETS[dataset].training_defaults(model), **chosen)


def _accepted_models(dataset: str) -> list[str]:
    """The models ``dataset`` takes as input (lenet's refusal to train aside)."""
    accepted = []
    for model in MODELS:
        try:
            check_model_fits(model, input_shape=DATASETS[dataset].input_shape)
        except ConfigError:
            continue
        accepted.append(model)
    return accepted


def test_training_settings_default_to_the_data_sets_and_are_recorded():
    for dataset in DATASETS:
        for model in TRAINABLE_MODELS:
            if model not in _accepted_models(dataset):
                continue  # a model the data set does not take (checked below)
            config = RunConfig(dataset=dataset, model=model, clients=2)
            expected = _expected_training(dataset, model)
            assert config.training == expected
            assert (config.lr, config.momentum, config.batch_size, config.local_epochs) == (None,) * 4
            written = json.loads(config.to_json())
            assert {name: written[name] for name in TRAINING} == dataclasses.asdict(expected)
            assert "training" not in written
    given = RunConfig(dataset="boston", model="mlp", lr=0.5, batch_size=3)
    assert given.training == _expected_training("boston", "mlp", lr=0.5, batch_size=3)


TRAINING = ("lr", "momentum", "batch_size", "local_epochs")


@pytest.mark.parametrize("dataset", list(DATASETS))
def test_every_data_set_has_defaults_for_every_model_it_trains(dataset):
    """Issue 10: each registry entry carries training defaults for every model it accepts (its own
    ``training``, or a ``training_by_model`` entry), and names no model it does not accept."""
    info = DATASETS[dataset]
    accepted = _accepted_models(dataset)
    assert set(info.training_by_model) <= set(accepted) & set(TRAINABLE_MODELS)
    for model in accepted:
        if model not in TRAINABLE_MODELS:
            continue
        defaults = info.training_defaults(model)
        assert defaults == info.training_by_model.get(model, info.training)
        assert 0 < defaults.lr < 1 and 0 <= defaults.momentum < 1
        assert defaults.batch_size >= 1 and defaults.local_epochs >= 1
        assert RunConfig(dataset=dataset, model=model, clients=2).training == defaults


@pytest.mark.parametrize("dataset", [name for name in DATASETS if "lenet" in _accepted_models(name)])
def test_lenet_is_refused_for_training_naming_the_models_to_train(dataset):
    """lenet (the attacks' sigmoid LeNet) stays at chance under local SGD: training refuses it and
    says what to train instead; the attacks still build it."""
    assert "lenet" not in TRAINABLE_MODELS
    with pytest.raises(ConfigError) as error:
        RunConfig(dataset=dataset, model="lenet")
    message = str(error.value)
    assert "gradient-inversion attacks" in message
    assert f"set `model` to one of {', '.join(TRAINABLE_MODELS)}" in message
    assert set(TRAINABLE_MODELS) == {"cnn", "resnet18", "mlp"}
    build_model("lenet", input_shape=DATASETS[dataset].input_shape, num_outputs=10)


def test_more_clients_than_training_samples_are_refused_naming_the_count():
    """toy has 4 training points: the default 10 clients cannot each hold one."""
    with pytest.raises(
        ConfigError,
        match=r"clients 10 > the 4 training samples of dataset 'toy'.*"
        r"set `clients` to 4 or fewer",
    ):
        RunConfig(dataset="toy", model="mlp")
    assert RunConfig(dataset="toy", model="mlp", clients=4).clients == 4


def test_the_constructor_is_the_dataclass_one_and_training_is_derived():
    """The fields a user sets are the constructor's parameters, in order; ``training`` is not one
    of them (it is derived) and cannot be given."""
    parameters = list(inspect.signature(RunConfig).parameters)
    assert parameters == [f.name for f in dataclasses.fields(RunConfig) if f.name != "training"]
    assert not next(f for f in dataclasses.fields(RunConfig) if f.name == "training").init
    with pytest.raises(TypeError):
        RunConfig(training=_expected_training("boston", "mlp"))  # type: ignore[call-arg]
    config = RunConfig.from_mapping({"dataset": "boston", "model": "mlp", "lr": None})
    assert config == RunConfig(dataset="boston", model="mlp")
    assert config.training == _expected_training("boston", "mlp")


@pytest.mark.parametrize(
    "chosen", [{}, {"lr": 0.02}, {"batch_size": 5, "momentum": 0.0}, {"local_epochs": 3}]
)
def test_replace_resolves_the_training_settings_again_and_keeps_the_choices(chosen):
    """`dataclasses.replace` to another data set or model gives the config built directly with
    those settings (the reviewer's case: mnist-sample's lr 0.05 / batch 16 must not follow the
    config to boston), and an explicit choice survives a replace of anything else."""
    first = RunConfig(clients=2, rounds=3, **chosen)
    assert first.training == _expected_training("mnist-sample", "cnn", **chosen)
    moved = dataclasses.replace(first, dataset="boston", model="mlp")
    direct = RunConfig(clients=2, rounds=3, dataset="boston", model="mlp", **chosen)
    assert moved == direct
    assert moved.training == direct.training == _expected_training("boston", "mlp", **chosen)
    again = dataclasses.replace(moved, rounds=7)
    assert again.training == moved.training
    assert {name: getattr(again, name) for name in chosen} == chosen
    assert dataclasses.replace(again, dataset="digits").training == _expected_training(
        "digits", "mlp", **chosen
    )


@pytest.mark.parametrize(
    "config",
    [
        RunConfig(),
        RunConfig(dataset="boston", model="mlp", lr=0.002, rounds=2),
        RunConfig(clients=4, dp=DPConfig(noise_multiplier=0.7), batch_size=4),
        RunConfig(
            clients=4, secagg=SecAggConfig(bits=24), central_dp=CentralDPConfig(client_sampling="fixed")
        ),
    ],
)
def test_config_json_round_trip_builds_the_same_run(config):
    """config.json records the resolved training settings: loading it gives them as explicit
    choices, and the same run (every other field equal, the same training numbers)."""
    loaded = RunConfig.from_mapping(json.loads(config.to_json()))
    assert loaded.training == config.training
    assert {name: getattr(loaded, name) for name in TRAINING} == dataclasses.asdict(config.training)
    assert dataclasses.replace(loaded, **dict.fromkeys(TRAINING)) == dataclasses.replace(
        config, **dict.fromkeys(TRAINING)
    )
    assert loaded.to_json() == config.to_json()


def test_toml_with_and_without_training_settings(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('dataset = "boston"\nmodel = "mlp"\n')
    config = RunConfig.from_toml(path)
    assert (config.lr, config.training) == (None, _expected_training("boston", "mlp"))
    path.write_text('dataset = "boston"\nmodel = "mlp"\nlr = 0.01\nbatch-size = 4\n')
    config = RunConfig.from_toml(path, {"local_epochs": 1})
    assert config.training == _expected_training("boston", "mlp", lr=0.01, batch_size=4, local_epochs=1)
    assert RunConfig.from_mapping({"dataset": "boston", "model": "mlp", "momentum": 0.9}).training == (
        _expected_training("boston", "mlp", momentum=0.9)
    )


def test_a_path_data_dir_is_stored_as_text_and_written(tmp_path):
    config = RunConfig(data_dir=tmp_path)
    assert config.data_dir == str(tmp_path)
    assert json.loads(config.to_json())["data_dir"] == str(tmp_path)
    assert config == RunConfig(data_dir=str(tmp_path))


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"clients": "3"}, "`clients` must be an integer, not '3'"),
        ({"batch_size": 2.5}, "`batch_size` must be an integer (or left out), not 2.5"),
        ({"local_epochs": True}, "`local_epochs` must be an integer (or left out), not True"),
        ({"lr": "0.1"}, "`lr` must be a number (or left out), not '0.1'"),
        ({"download": 1}, "`download` must be true or false, not 1"),
        ({"dataset": 3}, "`dataset` must be a string, not 3"),
        ({"dp": True}, "`dp` must be a DPConfig (or left out), not True"),
        ({"seed": 2**63}, "use a `seed` below 9223372036854775808"),
        ({"local_epochs": 10**20}, "`local_epochs` 100000000000000000000 >= 2**63"),
        ({"batch_size": 2**63}, "use a `batch_size` below 9223372036854775808"),
        ({"lr": 10**400}, "`lr` 1000"),  # an int too large for a float: refused, not OverflowError
        ({"threads": 2**31}, "threads 2147483648 >= 2**31: use a `threads` below 2147483648"),
        ({"lr": 1e308}, "learning rate 1e+308 > 3.40282e+38: use a smaller `lr`"),
        ({"weight_decay": 1e39}, "weight decay 1e+39 > 3.40282e+38: use a smaller `weight_decay`"),
    ],
)
def test_the_constructor_checks_types_and_ranges_naming_the_field(values, fragment):
    with pytest.raises(ConfigError) as error:
        RunConfig(**values)
    assert fragment in str(error.value)


@pytest.mark.parametrize(
    ("kind", "values", "fragment"),
    [
        (DPConfig, {"noise_multiplier": "1"}, "`dp.noise_multiplier` must be a number (or left out)"),
        (CentralDPConfig, {"distributed": "no"}, "`central_dp.distributed` must be true or false"),
        (SecAggConfig, {"bits": 16.0}, "`secagg.bits` must be an integer, not 16.0"),
    ],
)
def test_sections_check_types_naming_the_field_path(kind, values, fragment):
    with pytest.raises(ConfigError) as error:
        kind(**values)
    assert fragment in str(error.value)


def test_the_largest_seed_and_learning_rate_are_accepted():
    assert RunConfig(seed=2**63 - 1, lr=3.4e38, threads=2**31 - 1).seed == 2**63 - 1


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('dp = "false"', "`dp` must be true or false, not 'false'"),
        ('dp = "no"', "`dp` must be true or false, not 'no'"),
        ("dp = 1", "`dp` must be true or false, not 1"),
        (
            '[secagg]\nenabled = "false"',
            "`secagg` (`enabled` in its table) must be true or false, not 'false'",
        ),
        ('distributed-dp = "false"', "`central_dp.distributed` must be true or false, not 'false'"),
        (
            "[dp]\nbogus = 1",
            "unknown key 'bogus' in the [dp] table: valid keys are enabled, noise-multiplier, max-grad-norm, "
            "delta, accountant, target-epsilon",
        ),
        ("[secagg]\ncentral-delta = 1e-6", "unknown key 'central-delta' in the [secagg] table"),
        ("secagg-bits = 16\n[secagg]\nbits = 20", "`secagg.bits` is given twice"),
    ],
)
def test_toml_switches_are_booleans_and_table_keys_are_known(tmp_path, text, fragment):
    path = tmp_path / "run.toml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError) as error:
        RunConfig.from_toml(path)
    assert fragment in str(error.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("dp = false", None),
        ("[dp]\nenabled = false", None),
        ("[dp]\nenabled = true\ndelta = 1e-6", DPConfig(delta=1e-6)),
        ("[secagg]\nsecagg-bits = 24", SecAggConfig(bits=24)),  # a flat name inside its table
        ("[secagg]\nbits = 24", SecAggConfig(bits=24)),
        ("[central-dp]\ncentral-delta = 1e-6", CentralDPConfig(delta=1e-6)),
        ("distributed-dp = true\nsecagg = true", CentralDPConfig(distributed=True)),
    ],
)
def test_toml_tables_take_field_and_setting_names(tmp_path, text, expected):
    path = tmp_path / "run.toml"
    path.write_text(text + "\n")
    config = RunConfig.from_toml(path, {"clients": 4})
    section = {DPConfig: config.dp, SecAggConfig: config.secagg, CentralDPConfig: config.central_dp}
    assert section[type(expected)] == expected if expected is not None else config.dp is None


def test_a_flag_switching_a_section_overrides_the_files_table(tmp_path):
    """`--secagg` with a file's [secagg] table keeps the table's settings; `--no-dp` with a file's
    [dp] table turns DP off (the file's DP settings are then unused, not an error)."""
    path = tmp_path / "run.toml"
    path.write_text("clients = 4\n[secagg]\nbits = 24\n[dp]\ndelta = 1e-6\n")
    config = RunConfig.from_toml(path, {"secagg": True, "dp": False, "secagg_bits": 20})
    assert (config.secagg, config.dp) == (SecAggConfig(bits=20), None)


def test_a_model_the_data_set_cannot_take_is_refused_on_construction():
    with pytest.raises(ConfigError, match="needs image input.*use `model` mlp"):
        RunConfig(dataset="boston", model="cnn")


@pytest.mark.parametrize(
    ("text", "flags", "expected"),
    [
        ("clients_per_round = 5", {"fraction": 0.5}, (None, 0.5)),
        ("fraction = 0.5", {"clients_per_round": 5}, (5, None)),
        ("clients-per-round = 5", {"clients_per_round": 3}, (3, None)),
        ("clients_per_round = 5", {"rounds": 2}, (5, None)),
    ],
)
def test_a_flag_for_one_of_clients_per_round_and_fraction_drops_the_files_other(
    tmp_path, text, flags, expected
):
    path = tmp_path / "run.toml"
    path.write_text(f"clients = 10\n{text}\n")
    config = RunConfig.from_toml(path, flags)
    assert (config.clients_per_round, config.fraction) == expected


def test_both_alternatives_as_flags_or_in_the_file_are_still_refused(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("clients = 10\n")
    with pytest.raises(ConfigError, match="either `clients_per_round` or `fraction`"):
        RunConfig.from_toml(path, {"clients_per_round": 5, "fraction": 0.5})
    path.write_text("clients = 10\nclients_per_round = 5\nfraction = 0.5\n")
    with pytest.raises(ConfigError, match="either `clients_per_round` or `fraction`"):
        RunConfig.from_toml(path)


@pytest.mark.parametrize(
    "text",
    [
        "[dp]\nenabled = false\nnoise_multiplier = 1.1",
        "[central-dp]\nenabled = false\nclip-norm = 2.0\ndistributed = true",
        "[secagg]\nenabled = false\nbits = 24\nthreshold = 0.9",
    ],
)
def test_a_table_switched_off_by_enabled_false_drops_its_keys(tmp_path, text):
    path = tmp_path / "run.toml"
    path.write_text(text + "\n")
    config = RunConfig.from_toml(path, {"clients": 4})
    assert (config.dp, config.central_dp, config.secagg) == (None, None, None)
    assert RunConfig.from_mapping({"clients": 4, **tomllib.loads(text)}).secagg is None


def test_a_table_switched_off_still_refuses_an_unknown_key(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("[dp]\nenabled = false\nbogus = 1\n")
    with pytest.raises(ConfigError, match="unknown key 'bogus' in the \\[dp\\] table"):
        RunConfig.from_toml(path)


def test_numpy_numbers_are_accepted_and_stored_as_built_in_numbers():
    config = RunConfig(
        clients=np.int64(4),
        clients_per_round=np.int32(3),
        lr=np.float32(0.25),
        momentum=np.float64(0.5),
        alpha=np.int64(2),
        seed=np.uint8(3),
        secagg=SecAggConfig(bits=np.int64(24), threshold=np.float32(0.75), neighbors=None),
        dp=DPConfig(noise_multiplier=np.float32(1.5)),
    )
    stored = (config.clients, config.clients_per_round, config.seed, config.secagg.bits)
    assert stored == (4, 3, 3, 24) and {type(v) for v in stored} == {int}
    floats = (config.lr, config.momentum, config.alpha, config.secagg.threshold, config.dp.noise_multiplier)
    assert floats == (0.25, 0.5, 2.0, 0.75, 1.5) and {type(v) for v in floats} == {float}
    assert config.training.lr == 0.25 and type(config.training.lr) is float
    assert json.loads(config.to_json())["clients"] == 4
    assert dataclasses.replace(config, rounds=np.int16(3)).rounds == 3


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"clients": np.float64(4.0)}, "`clients` must be an integer"),
        ({"clients": np.True_}, "`clients` must be an integer"),
        ({"clients": True}, "`clients` must be an integer"),
        ({"lr": np.True_}, "`lr` must be a number"),
        ({"lr": "0.1"}, "`lr` must be a number"),
        ({"clients": "4"}, "`clients` must be an integer"),
        ({"seed": np.uint64(2**63)}, "`seed` 9223372036854775808 >= 2**63"),
        ({"lr": np.float32(-1)}, "learning rate -1.0 <= 0"),
    ],
)
def test_numpy_values_of_the_wrong_kind_or_range_are_refused(values, fragment):
    with pytest.raises(ConfigError) as error:
        RunConfig(**values)
    assert fragment in str(error.value)


def test_workers_default_to_the_cores_available_and_never_outnumber_the_clients():
    cores = len(os.sched_getaffinity(0))
    config = RunConfig(dataset="digits", model="mlp", device="cpu")
    assert config.workers is None and config.worker_processes == min(cores, 10)
    assert json.loads(config.to_json())["workers"] is None
    assert RunConfig.from_mapping(json.loads(config.to_json())).workers is None
    assert RunConfig(dataset="digits", model="mlp", clients=1).worker_processes == 1
    assert RunConfig(dataset="digits", model="mlp", clients=3, workers=8).worker_processes == 3
    assert RunConfig(dataset="digits", model="mlp", workers=1).worker_processes == 1
    with pytest.raises(ConfigError, match="workers 0 < 1: use `workers` 1 or more"):
        RunConfig(workers=0)


def test_an_unknown_device_and_cuda_without_a_gpu_are_refused_naming_device(monkeypatch):
    with pytest.raises(ConfigError, match="unknown device 'tpu': set `device` to one of auto, cpu, cuda"):
        RunConfig(device="tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(
        ConfigError, match="`device` cuda, but torch sees no CUDA GPU .* use `device` cpu or auto"
    ):
        RunConfig(device="cuda")
    assert RunConfig().torch_device == RunConfig(device="cpu").torch_device == torch.device("cpu")


def test_auto_trains_on_a_gpu_torch_sees_in_one_process(monkeypatch):
    """Worker processes share the CPU's cores; a GPU is one device: by default a run on it keeps
    its clients in one process, and asking for several is refused before any work."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    config = RunConfig(dataset="digits", model="mlp")
    assert config.torch_device == torch.device("cuda") and config.worker_processes == 1
    cores = len(os.sched_getaffinity(0))
    assert RunConfig(dataset="digits", model="mlp", device="cpu").worker_processes == min(cores, 10)
    with pytest.raises(ConfigError, match="use `workers` 1 to train on the GPU, or `device` cpu"):
        RunConfig(dataset="digits", model="mlp", workers=2)
