"""A deployed DP client restarted from the ledger on its disk remembers the rounds it trained:
a server replaying one of them gets a refusal, and the ledger is left as it was."""

from __future__ import annotations

import torch

from securefl.cli.demo import create_federation, shard_path
from securefl.deploy.client_program import prepare_client
from securefl.deploy.federation_file import FederationFile
from securefl.fl.codec import decode, encode
from securefl.fl.messages import Decline, DeclineReason, TrainRequest
from securefl.fl.vectors import to_vector


def test_a_restarted_dp_client_refuses_a_round_its_ledger_holds(tmp_path):
    toml = create_federation(tmp_path, clients=3, rounds=3)
    federation = FederationFile.load(toml)
    identity = toml.parent / "client-0"
    first = prepare_client(federation, identity=identity, data=shard_path(tmp_path, 0))
    params = to_vector(first.client.architecture.parameters())
    trainer = first.client.trainer
    trainer.train(global_params=params, shard=first.client.shard, round_index=2, generator=torch.Generator())
    assert first.ledger is not None
    first.ledger.write_bytes(trainer.export_ledger())

    restarted = prepare_client(federation, identity=identity, data=shard_path(tmp_path, 0))
    assert restarted.client.memory().last_round == 2
    held = restarted.client.trainer.export_ledger()
    for replayed in (1, 2):
        request = TrainRequest(replayed, 0, params, (), b"")
        replies = [decode(reply) for reply in restarted.client.receive(encode(request))]
        assert len(replies) == 1 and isinstance(replies[0], Decline)
        assert replies[0].reason is DeclineReason.REFUSED
        assert "already trained" in replies[0].detail
    assert restarted.client.trainer.export_ledger() == held  # no budget spent on a replay
