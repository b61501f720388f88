"""RunConfig validation, TOML reading and flag precedence."""

from __future__ import annotations

import json

import pytest

from securefl.config import CentralDPConfig, DPConfig, RunConfig, SecAggConfig
from securefl.errors import ConfigError


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"dataset": "imagenet"}, "unknown dataset 'imagenet'"),
        ({"model": "vgg"}, "unknown model 'vgg'"),
        ({"partition": "random"}, "unknown partition 'random'"),
        ({"algorithm": "fedprox"}, "unknown algorithm"),
        ({"clients": 0}, "clients 0 < 1"),
        ({"clients": 5, "clients_per_round": 6}, "--clients-per-round"),
        ({"fraction": 0.0}, "fraction 0.0 is outside (0, 1]"),
        ({"fraction": 1.5}, "fraction 1.5 is outside (0, 1]"),
        ({"alpha": 0.0}, "alpha 0.0 <= 0"),
        ({"alpha": -1.0}, "alpha -1.0 <= 0"),
        ({"rounds": 0}, "rounds 0 < 1"),
        ({"lr": 0.0}, "learning rate 0.0 <= 0"),
        ({"lr": -0.1}, "learning rate -0.1 <= 0"),
        ({"clients_per_round": 3, "fraction": 0.5}, "not both"),
        ({"noise_multiplier": 1.0}, "--noise-multiplier given without --dp"),
        ({"secagg_bits": 16}, "without --secagg"),
        ({"clip_norm": 1.0}, "without --central-dp"),
        ({"colour": "blue"}, "unknown setting 'colour'"),
        ({"clients": "ten"}, "setting 'clients' must be an integer, not 'ten'"),
        ({"secagg": True, "secagg_threshold": "0.5"}, "'secagg-threshold' must be a number (or left out)"),
        ({"secagg": True, "secagg_colluders": 2.0}, "'secagg-colluders' must be an integer (or left out)"),
        ({"secagg": {"bits": "16"}}, "setting 'secagg-bits' must be an integer, not '16'"),
        ({"secagg": True, "active_adversary": "yes"}, "setting 'active-adversary' must be true or false"),
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
    with pytest.raises(ConfigError, match="--client-sampling fixed"):
        RunConfig.from_mapping(base)
    assert RunConfig.from_mapping({**base, "client_sampling": "fixed"}).secagg.dropout_rate == 0.1
    assert RunConfig.from_mapping({**base, "dropout_rate": 0.0}).central_dp.client_sampling == "poisson"
    assert RunConfig.from_mapping({**base, "central_dp": False}).secagg.dropout_rate == 0.1
