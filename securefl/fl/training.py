"""Local training of one client on its shard (McMahan et al., "Communication-Efficient Learning of
Deep Networks from Decentralized Data", AISTATS 2017, ClientUpdate).

One :class:`LocalSGDTrainer` serves every client of a simulation: it owns a single model and a
single optimizer, loads the global parameters into them, trains, and returns the parameter delta.
Nothing is rebuilt or deep-copied per client, so a round costs what training its samples costs.
FedSGD is the special case of one full-batch step without momentum.

On a ``device`` other than the CPU (:mod:`securefl.devices`) the model lives there, each batch is
copied there, and the delta comes back as a CPU tensor: what leaves a client is the same whatever
it trained on.  The batch order is drawn on the CPU from the client's generator either way.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from securefl.fl.types import ClientShard, Update
from securefl.fl.vectors import load_vector, to_vector

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def loss_for_task(task: str) -> LossFn:
    """Mean cross-entropy for classification, mean squared error for regression."""
    if task == "classification":
        return nn.functional.cross_entropy
    return lambda output, target: nn.functional.mse_loss(output.squeeze(-1), target)


def batch_order(num_samples: int, *, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A seeded shuffle of ``range(num_samples)`` cut into batches (the last one may be short)."""
    return list(torch.randperm(num_samples, generator=generator).split(batch_size))


class LocalSGDTrainer:
    """Plain local SGD: ``local_epochs`` passes over the shard in shuffled mini-batches.

    The optimizer's momentum buffers are reset for every client, as each client starts a fresh
    local optimisation from the global model in FedAvg.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        task: str,
        local_epochs: int,
        batch_size: int | None,
        lr: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        device: torch.device | str = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.loss_fn = loss_for_task(task)
        self.local_epochs = local_epochs
        self.batch_size = batch_size
        self.optimizer = torch.optim.SGD(self.parameters, lr=lr, momentum=momentum, weight_decay=weight_decay)

    def can_train(self, client_id: int) -> bool:
        """Plain training has no budget: every client can always train."""
        return True

    def train(
        self,
        *,
        global_params: torch.Tensor,
        shard: ClientShard,
        round_index: int,
        generator: torch.Generator,
    ) -> Update:
        device = self.device
        start = global_params.to(device)
        load_vector(self.parameters, start)
        self.optimizer.state.clear()
        self.model.train()
        num_samples = len(shard)
        batch_size = self.batch_size or num_samples
        loss_sum = 0.0
        seen = 0
        for _ in range(self.local_epochs):
            for batch in batch_order(num_samples, batch_size=batch_size, generator=generator):
                self.optimizer.zero_grad(set_to_none=True)
                x, y = shard.x[batch].to(device), shard.y[batch].to(device)
                loss = self.loss_fn(self.model(x), y)
                loss.backward()
                self.optimizer.step()
                loss_sum += loss.item() * len(batch)
                seen += len(batch)
        delta = (to_vector(self.parameters) - start).cpu()
        return Update(
            client_id=shard.client_id,
            delta=delta,
            num_samples=num_samples,
            train_loss=loss_sum / max(seen, 1),
        )
