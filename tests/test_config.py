"""RunConfig validation, TOML reading and flag precedence."""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import typing

import pytest

from securefl.config import CentralDPConfig, DPConfig, RunConfig, SecAggConfig
from securefl.data import DATASETS
from securefl.errors import ConfigError
from securefl.models import MODELS


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
    """Every field path of RunConfig whose value is a float (or an optional float)."""
    kinds = {"": RunConfig, "dp.": DPConfig, "central_dp.": CentralDPConfig, "secagg.": SecAggConfig}
    return [
        prefix + name
        for prefix, kind in kinds.items()
        for name, hint in typing.get_type_hints(kind).items()
        if hint is float or float in typing.get_args(hint)
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


def test_training_settings_default_to_the_data_sets_and_are_recorded():
    for dataset, info in DATASETS.items():
        for model in MODELS:
            try:
                config = RunConfig(dataset=dataset, model=model)
            except ConfigError:
                continue  # a model the data set does not take (checked below)
            expected = info.training_defaults(model)
            resolved = (config.lr, config.momentum, config.batch_size, config.local_epochs)
            assert resolved == (expected.lr, expected.momentum, expected.batch_size, expected.local_epochs)
            written = json.loads(config.to_json())
            assert (written["lr"], written["batch_size"]) == (expected.lr, expected.batch_size)
    given = RunConfig(dataset="boston", model="mlp", lr=0.5, batch_size=3)
    defaults = DATASETS["boston"].training_defaults("mlp")
    assert (given.lr, given.batch_size, given.momentum) == (0.5, 3, defaults.momentum)


def test_the_constructor_takes_every_field_in_order_and_the_training_fields_are_plain_numbers():
    """RunConfig writes its own constructor (the training settings may be left out for the data
    set's defaults): it must take exactly the fields, in order, and store resolved numbers."""
    parameters = list(inspect.signature(RunConfig).parameters)
    assert parameters == [f.name for f in dataclasses.fields(RunConfig)]
    hints = typing.get_type_hints(RunConfig)
    assert (hints["lr"], hints["momentum"], hints["batch_size"], hints["local_epochs"]) == (
        float,
        float,
        int,
        int,
    )
    config = RunConfig.from_mapping({"dataset": "boston", "model": "mlp", "lr": None})
    defaults = DATASETS["boston"].training_defaults("mlp")
    assert config == RunConfig(dataset="boston", model="mlp")
    assert (config.lr, config.batch_size) == (defaults.lr, defaults.batch_size)
    assert dataclasses.replace(config, clients=2).lr == defaults.lr


def test_a_model_the_data_set_cannot_take_is_refused_on_construction():
    with pytest.raises(ConfigError, match="needs image input.*use `model` mlp"):
        RunConfig(dataset="boston", model="cnn")
