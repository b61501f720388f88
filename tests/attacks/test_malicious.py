"""Malicious-server attacks through the real round: the imprint layer recovers individual images
from the secure-aggregation sum, model inconsistency isolates the target, and the client-side
defences stop both.  PSNR is recomputed here from the arrays with metrics.psnr, image by image."""

from __future__ import annotations

import inspect

import pytest
import torch

from securefl.attacks.imprint import hide_where_the_data_never_looks, recover
from securefl.attacks.malicious import (
    ClientDefences,
    MaliciousConfig,
    play_trial,
    prepare_malicious,
)
from securefl.attacks.metrics import psnr
from securefl.attacks.observation import Observation
from securefl.fl.types import ClientShard

OFF = ClientDefences(consistency=False, pinning=False, parameter_checks=False)


def _shards(dataset, clients: int, batch: int, offset: int = 0) -> list[ClientShard]:
    return [
        ClientShard(
            c,
            dataset.train_x[offset + c * batch : offset + (c + 1) * batch],
            dataset.train_y[offset + c * batch : offset + (c + 1) * batch],
        )
        for c in range(clients)
    ]


def _best(candidates: torch.Tensor, image: torch.Tensor) -> float:
    return max((psnr(candidate, image) for candidate in candidates), default=0.0)


def _round(dataset, shards, **config):
    prepared = prepare_malicious(MaliciousConfig(**config), dataset=dataset)
    return play_trial(prepared, shards, trial=0)


def test_recovery_reads_only_the_observation_and_the_attackers_own_layout():
    assert list(inspect.signature(recover).parameters) == ["observation", "layout", "tolerance"]
    assert inspect.signature(recover).parameters["observation"].annotation in (Observation, "Observation")


def test_imprint_recovers_individual_images_from_the_secure_sum_of_four_clients(mnist):
    shards = _shards(mnist, clients=4, batch=8)
    result, candidates = _round(
        mnist, shards, attack="imprint", placement="front", bins=256, clients=4, defences=OFF
    )
    assert result.aborted is None and not result.refused
    images = torch.cat([s.x for s in shards])
    scores = [_best(candidates, image) for image in images]
    recovered = [s >= 30 for s in scores]
    # 32 images in 256 quantile bins: about exp(-31/256) ≈ 89% sit alone in theirs.
    assert sum(recovered) >= 20, scores
    # Not only the target's: images of every client come back out of the sum.
    assert all(any(recovered[c * 8 : (c + 1) * 8]) for c in range(4))
    assert result.everyone_recovered == pytest.approx(sum(recovered) / len(images))


def test_imprint_in_the_pinned_mlp_recovers_colour_images(photos):
    shards = _shards(photos, clients=2, batch=4)
    result, candidates = _round(
        photos, shards, attack="imprint", placement="mlp", clients=2, batch_size=4, defences=OFF
    )
    scores = [_best(candidates, image) for image in torch.cat([s.x for s in shards])]
    assert sum(s >= 30 for s in scores) >= 4, scores


def test_model_inconsistency_gives_the_target_alone_out_of_the_secure_sum(mnist):
    shards = _shards(mnist, clients=8, batch=8)
    result, candidates = _round(
        mnist, shards, attack="inconsistency", placement="mlp", clients=8, defences=OFF
    )
    target = [_best(candidates, image) for image in shards[0].x]
    others = [_best(candidates, image) for s in shards[1:] for image in s.x]
    assert sum(s >= 30 for s in target) >= 6, target  # 8 images in 64 bins
    assert max(others) < 30  # the others' bins were switched off: nothing of theirs is in the sum
    # The same model to everyone spreads the 64 bins over 64 images: the target loses most of them.
    _, shared = _round(mnist, shards, attack="imprint", placement="mlp", clients=8, defences=OFF)
    assert sum(_best(shared, image) >= 30 for image in shards[0].x) < sum(s >= 30 for s in target)


@pytest.mark.parametrize("active", [False, True])
def test_model_consistency_defeats_model_inconsistency(mnist, active):
    shards = _shards(mnist, clients=8, batch=8)
    consistency_only = ClientDefences(consistency=True, pinning=False, parameter_checks=False)
    result, candidates = _round(
        mnist,
        shards,
        attack="inconsistency",
        placement="mlp",
        clients=8,
        active=active,
        defences=consistency_only,
    )
    assert not result.refused
    assert all(_best(candidates, image) < 30 for image in shards[0].x)
    assert result.target_recovered == 0


def test_architecture_pinning_refuses_the_imprint_block_and_parameter_checks_the_repurposed_mlp(
    mnist, caplog
):
    shards = _shards(mnist, clients=4, batch=8)
    pinned = ClientDefences(consistency=False, pinning=True, parameter_checks=False)
    result, candidates = _round(
        mnist, shards, attack="imprint", placement="front", clients=4, defences=pinned
    )
    assert result.refused == (0, 1, 2, 3) and len(candidates) == 0
    assert "not the pinned 'mlp'" in result.findings[0]
    assert "client 0 refuses the global model" in caplog.text

    # The pinned architecture passes the pin; the weight checks refuse it.
    result, _ = _round(mnist, shards, attack="imprint", placement="mlp", clients=4, defences=pinned)
    assert result.refused == ()
    checked = ClientDefences(consistency=False, pinning=True, parameter_checks=True)
    result, candidates = _round(mnist, shards, attack="imprint", placement="mlp", clients=4, defences=checked)
    assert result.refused == (0, 1, 2, 3) and len(candidates) == 0
    assert "rank-one share" in result.findings[0]


def test_with_every_defence_on_the_inconsistency_targets_are_refused_or_defeated(mnist):
    shards = _shards(mnist, clients=4, batch=8)
    result, candidates = _round(mnist, shards, attack="inconsistency", placement="mlp", clients=4)
    assert 0 in result.refused and len(candidates) == 0


def test_the_benchmarks_sum_in_the_clear_gives_what_secure_aggregation_gives(mnist):
    shards = _shards(mnist, clients=3, batch=4)
    common = dict(attack="imprint", placement="front", bins=64, clients=3, batch_size=4, defences=OFF)
    secure, from_protocol = _round(mnist, shards, **common)
    clear, from_plain_sum = _round(mnist, shards, **common, sum_in_clear=True)
    assert len(from_protocol) == len(from_plain_sum) > 0
    recovered = [p >= 30 for p in secure.everyone_psnr]
    assert sum(recovered) >= 6
    assert recovered == [p >= 30 for p in clear.everyone_psnr]


def _hide_where_the_data_never_looks(dataset, real_imprint_model):
    """The reviewer's evasion of the checks over the input cube, as the server would build it."""
    unused = (dataset.test_x.flatten(1).abs().max(0).values == 0).float()

    def imprint_model(**kwargs):
        model, layout = real_imprint_model(**kwargs)
        hide_where_the_data_never_looks(
            model, unused_inputs=unused, generator=torch.Generator().manual_seed(1)
        )
        return model, layout

    return imprint_model


def test_weights_hidden_where_the_data_never_looks_are_refused_by_every_client(mnist, monkeypatch):
    from securefl.attacks import malicious

    monkeypatch.setattr(
        malicious, "imprint_model", _hide_where_the_data_never_looks(mnist, malicious.imprint_model)
    )
    shards = _shards(mnist, clients=4, batch=8)
    undefended, _ = _round(mnist, shards, attack="imprint", placement="mlp", clients=4, defences=OFF)
    assert undefended.everyone_recovered > 0  # the hidden weights cost the attack nothing
    result, candidates = _round(mnist, shards, attack="imprint", placement="mlp", clients=4)
    assert result.refused == (0, 1, 2, 3) and len(candidates) == 0
    assert "rank-one share on the data" in result.findings[0]


def test_with_pinning_the_client_trains_its_own_module_not_the_servers(mnist, monkeypatch):
    """A forward pre-hook and an extra buffer on the server's module: with the pin the client
    builds the mlp from the config and loads only the flat vector, so neither reaches it."""
    from securefl.attacks import malicious

    real = malicious.server_models
    calls = []

    def server_models(prepared, *, trial):
        models, layout = real(prepared, trial=trial)
        for model in {id(m): m for m in models.values()}.values():
            model.register_buffer("stolen", torch.zeros(784))
            model.register_forward_pre_hook(lambda module, args: calls.append(1))
        return models, layout

    monkeypatch.setattr(malicious, "server_models", server_models)
    shards = _shards(mnist, clients=2, batch=8)
    pinned = ClientDefences(consistency=True, pinning=True, parameter_checks=False)
    result, _ = _round(mnist, shards, attack="imprint", placement="mlp", clients=2, defences=pinned)
    assert result.refused == () and result.aborted is None
    assert calls == []
    # Without the pin the client runs the module it was sent, hook and all.
    _round(mnist, shards, attack="imprint", placement="mlp", clients=2, defences=OFF)
    assert calls
