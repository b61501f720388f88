"""A DP-SGD trainer's ledger as bytes: exported by one trainer, imported by another (a worker's
report to its parent, a deployed client's ledger on its disk), it reports the same ε, budget
decisions and ``privacy.json`` record, which are Opacus' accountant's for the same history; bytes
that are not such a ledger, another client's, or one that spent less than the ledger held are
refused and change nothing."""

from __future__ import annotations

import json

import pytest
from privacy_helpers import make_shards, make_trainer, opacus_epsilon, train

from securefl.config import DPConfig
from securefl.errors import LedgerError, PrivacyBudgetExceeded
from securefl.privacy import DPSGDTrainer

# Client 1 skips rounds 2 and 3: the ledger must keep which rounds each client spent.
SCHEDULE = {1: [0, 1], 2: [0], 3: [0], 4: [0, 1]}


def _trained(config: DPConfig, *, seed: int = 0) -> tuple[DPSGDTrainer, list]:
    shards = make_shards([40, 32])
    trainer = make_trainer(shards, config=config, batch_size=8, local_epochs=2, seed=seed)
    for round_index, sampled in SCHEDULE.items():
        for client_id in sampled:
            train(trainer, shards[client_id], round_index)
    return trainer, shards


def _fresh(shards, config: DPConfig, *, local_epochs: int = 2) -> DPSGDTrainer:
    """A trainer of the same clients and settings that never trained (its own secret seed)."""
    return make_trainer(shards, config=config, batch_size=8, local_epochs=local_epochs, seed=None)


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_an_imported_ledger_reports_what_the_exporter_did_and_opacus_agrees(accountant):
    config = DPConfig(noise_multiplier=1.1, delta=1e-3, accountant=accountant)
    exporter, shards = _trained(config)
    importer = _fresh(shards, config)
    importer.import_ledger(exporter.export_ledger())

    for client_id, size in ((0, 40), (1, 32)):
        assert importer.epsilon(client_id) == exporter.epsilon(client_id)
        assert importer.can_train(client_id) == exporter.can_train(client_id)
        rounds = sum(client_id in sampled for sampled in SCHEDULE.values())
        steps_per_round = 2 * -(-size // 8)
        expected = opacus_epsilon(
            accountant=accountant, noise=1.1, sample_rate=8 / size, steps=rounds * steps_per_round, delta=1e-3
        )
        assert importer.epsilon(client_id) == pytest.approx(expected, rel=1e-9)
    assert importer.ledger() == exporter.ledger()
    assert importer.round_metrics() == exporter.round_metrics()
    assert importer.ledger()["sample_level"]["clients"]["1"]["rounds"] == [1, 4]
    assert importer.export_ledger() == exporter.export_ledger()


def test_the_export_is_canonical_json_of_the_events():
    config = DPConfig(noise_multiplier=1.1, delta=1e-3)
    exporter, _ = _trained(config)
    data = exporter.export_ledger()
    document = json.loads(data)
    assert data == json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    assert document["accountant"] == "rdp" and document["delta"] == 1e-3 and document["budget"] is None
    client_1 = document["clients"][1]
    assert client_1["client_id"] == 1 and client_1["num_samples"] == 32 and client_1["excluded"] is None
    assert client_1["events"] == [
        {"round_index": r, "steps": 2 * 4, "sample_rate": 8 / 32, "noise_multiplier": 1.1} for r in (1, 4)
    ]


def test_a_ledger_is_taken_over_round_by_round_and_importing_it_again_changes_nothing():
    config = DPConfig(noise_multiplier=1.0, delta=1e-3)
    shards = make_shards([40, 32])
    exporter = make_trainer(shards, config=config, batch_size=8)
    importer = _fresh(shards, config, local_epochs=1)
    for round_index in (1, 2, 3):
        train(exporter, shards[round_index % 2], round_index)
        data = exporter.export_ledger()
        importer.import_ledger(data)
        importer.import_ledger(data)
        assert importer.export_ledger() == data
        assert importer.round_metrics() == exporter.round_metrics()


def test_a_client_stopped_by_its_budget_stays_stopped_after_the_import():
    """Noise given and the target only a budget: the exporter's client stops where Opacus' RDP
    accountant crosses ε = 6; the importer does not let it train again."""
    config = DPConfig(target_epsilon=6.0, delta=1e-3)
    object.__setattr__(config, "noise_multiplier", 1.0)  # DPConfig does not (yet) take both flags
    shards = make_shards([32])
    exporter = make_trainer(shards, config=config, batch_size=8, rounds=50)
    trained = 0
    while exporter.can_train(0):
        trained += 1
        train(exporter, shards[0], trained)
    beyond = opacus_epsilon(
        accountant="rdp", noise=1.0, sample_rate=8 / 32, steps=(trained + 1) * 4, delta=1e-3
    )
    assert beyond > 6.0 >= exporter.epsilon(0)

    importer = make_trainer(shards, config=config, batch_size=8, rounds=50, seed=None)
    importer.import_ledger(exporter.export_ledger())
    assert importer.privacy_ledger.excluded == (0,)
    assert importer.privacy_ledger[0].exclusion == exporter.privacy_ledger[0].exclusion
    assert not importer.can_train(0)
    with pytest.raises(PrivacyBudgetExceeded):
        train(importer, shards[0], trained + 1)
    assert importer.ledger() == exporter.ledger()


def _edited(data: bytes, edit) -> bytes:
    document = json.loads(data)
    edit(document)
    return json.dumps(document).encode()


def _set(path, value):
    def edit(document):
        *parents, last = path
        for key in parents:
            document = document[key]
        document[last] = value

    return edit


MALFORMED = {
    "not bytes": lambda data: data.decode(),
    "not JSON": lambda data: data[:-1],
    "not UTF-8": lambda data: b"\xff" + data,
    "NaN": lambda data: data.replace(b'"delta":0.001', b'"delta":NaN'),
    "a key twice": lambda data: data.replace(b'"budget":null', b'"budget":null,"budget":null'),
    "another format": lambda data: _edited(data, _set(["format"], "securefl/dp-sgd-ledger/2")),
    "a list": lambda data: b"[]",
    "a field missing": lambda data: _edited(data, lambda d: d["clients"][0].pop("excluded")),
    "a field more": lambda data: _edited(data, _set(["clients", 0, "epsilon"], 1.0)),
    "a bool for a count": lambda data: _edited(data, _set(["clients", 0, "events", 0, "steps"], True)),
    "a string for a rate": lambda data: _edited(
        data, _set(["clients", 0, "events", 0, "sample_rate"], "0.2")
    ),
    "a rate above 1": lambda data: _edited(data, _set(["clients", 0, "events", 0, "sample_rate"], 1.5)),
    "rounds out of order": lambda data: _edited(data, _set(["clients", 0, "events", 1, "round_index"], 1)),
    "an exclusion without a budget": lambda data: _edited(
        data, _set(["clients", 0, "excluded"], {"after_rounds": 4, "would_be_epsilon": 9.0})
    ),
    "an exclusion after other rounds": lambda data: _edited(
        data, _set(["clients", 0, "excluded"], {"after_rounds": 2, "would_be_epsilon": 9.0})
    ),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_ledgers_are_refused_and_change_nothing(name):
    config = DPConfig(noise_multiplier=1.1, delta=1e-3)
    exporter, shards = _trained(config)
    importer = _fresh(shards, config)
    train(importer, shards[1], 1)
    before = importer.export_ledger()
    with pytest.raises(LedgerError):
        importer.import_ledger(MALFORMED[name](exporter.export_ledger()))
    assert importer.export_ledger() == before


def test_another_clients_ledger_or_other_privacy_settings_are_refused():
    config = DPConfig(noise_multiplier=1.1, delta=1e-3)
    exporter, shards = _trained(config)
    data = exporter.export_ledger()
    with pytest.raises(
        LedgerError, match=r"of clients \[0 \(40 examples\), 1 \(32 examples\)\].*holds clients \[0 "
    ):
        _fresh(shards[:1], config).import_ledger(data)
    with pytest.raises(LedgerError, match="1 \\(33 examples\\)"):
        make_trainer(make_shards([40, 33]), config=config, batch_size=8, seed=None).import_ledger(data)
    with pytest.raises(LedgerError, match="listed twice"):
        _fresh(shards, config).import_ledger(_edited(data, lambda d: d["clients"].append(d["clients"][0])))
    for other in (
        DPConfig(noise_multiplier=1.1, delta=1e-4),
        DPConfig(noise_multiplier=1.1, delta=1e-3, accountant="prv"),
        DPConfig(noise_multiplier=1.1, delta=1e-3, target_epsilon=50.0),
    ):
        with pytest.raises(LedgerError, match="same privacy settings"):
            _fresh(shards, other).import_ledger(data)


def test_a_ledger_never_goes_backwards():
    config = DPConfig(noise_multiplier=1.1, delta=1e-3)
    shards = make_shards([40, 32])
    exporter = make_trainer(shards, config=config, batch_size=8)
    train(exporter, shards[0], 1)
    older = exporter.export_ledger()
    train(exporter, shards[0], 2)
    newer = exporter.export_ledger()
    importer = _fresh(shards, config, local_epochs=1)
    importer.import_ledger(newer)
    with pytest.raises(LedgerError, match="spent less than the one held"):
        importer.import_ledger(older)
    assert importer.export_ledger() == newer
    # Another history of the same length is no extension of the one held either.
    train(other := _fresh(shards, config, local_epochs=1), shards[0], 1)
    train(other, shards[0], 3)
    with pytest.raises(LedgerError, match="spent less than the one held"):
        importer.import_ledger(other.export_ledger())
    # An importer that trained on its own must not forget it.
    train(own := _fresh(shards, config, local_epochs=1), shards[1], 1)
    with pytest.raises(LedgerError, match="rounds \\[1\\]; the imported one has rounds \\[\\]"):
        own.import_ledger(newer)


def test_an_exclusion_is_never_undone_nor_invented():
    config = DPConfig(target_epsilon=6.0, delta=1e-3)
    object.__setattr__(config, "noise_multiplier", 1.0)
    shards = make_shards([32])
    exporter = make_trainer(shards, config=config, batch_size=8, rounds=50)
    train(exporter, shards[0], 1)
    before_exclusion = exporter.export_ledger()
    round_index = 1
    while exporter.can_train(0):
        round_index += 1
        train(exporter, shards[0], round_index)
    excluded = exporter.export_ledger()
    importer = make_trainer(shards, config=config, batch_size=8, rounds=50, seed=None)
    importer.import_ledger(excluded)
    with pytest.raises(LedgerError, match="then excluded; the imported one"):
        importer.import_ledger(_edited(excluded, _set(["clients", 0, "excluded"], None)))
    late = make_trainer(shards, config=config, batch_size=8, rounds=50, seed=None)
    late.import_ledger(before_exclusion)
    within_budget = {"after_rounds": 1, "would_be_epsilon": 5.0}
    with pytest.raises(LedgerError, match="within the budget"):
        late.import_ledger(_edited(before_exclusion, _set(["clients", 0, "excluded"], within_budget)))
    assert late.can_train(0)


def test_a_trainer_shared_by_clients_of_two_hosts_takes_over_each_hosts_own_clients():
    """Two copies of one trainer for clients 0 and 1 (two worker processes) each train their own
    client; the copy at home takes client 0's record from the first, client 1's from the second."""
    config = DPConfig(noise_multiplier=1.1, delta=1e-3)
    shards = make_shards([40, 32])
    first, second = (
        make_trainer(shards, config=config, batch_size=8),
        make_trainer(shards, config=config, batch_size=8),
    )
    for round_index in (1, 2):
        train(first, shards[0], round_index)
    train(second, shards[1], 2)
    home = _fresh(shards, config, local_epochs=1)
    home.import_ledger(first.export_ledger(), clients=[0])
    home.import_ledger(second.export_ledger(), clients=[1])
    assert (home.epsilon(0), home.epsilon(1)) == (first.epsilon(0), second.epsilon(1))
    assert home.privacy_ledger[0].rounds == (1, 2) and home.privacy_ledger[1].rounds == (2,)
    with pytest.raises(LedgerError, match="client 1's ledger has spent less than the one held"):
        home.import_ledger(first.export_ledger())  # the first host's copy is behind on client 1
    with pytest.raises(LedgerError, match=r"clients \[5\] are not in the ledger"):
        home.import_ledger(first.export_ledger(), clients=[0, 5])
    assert home.privacy_ledger[1].rounds == (2,)
