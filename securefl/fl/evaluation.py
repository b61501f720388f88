"""The server's evaluation of the global model on its held-out split.

The server holds only the test split (never a client's training data): loss and accuracy for
classification, mean squared error and R² for regression.  On a ``device`` other than the CPU
(:mod:`securefl.devices`) the evaluator keeps its own copy of the model and of the test split
there; the parameter vectors it is given stay CPU tensors.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from securefl.fl.record import Evaluation
from securefl.fl.vectors import load_vector


class Evaluator:
    """Evaluates parameter vectors with ``model``'s architecture on ``(x, y)``."""

    def __init__(
        self,
        *,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        task: str,
        batch_size: int = 1000,
        device: torch.device | str = "cpu",
    ):
        self.device = torch.device(device)
        # On the CPU the caller's model is used as it is; elsewhere a copy lives on the device.
        self.model = model if self.device.type == "cpu" else copy.deepcopy(model).to(self.device)
        self.x = x.to(self.device)
        self.y = y.to(self.device)
        self.task = task
        self.batch_size = batch_size

    def __call__(self, params: torch.Tensor) -> Evaluation:
        """Test loss and accuracy (classification) or MSE and R² (regression) of ``params``."""
        load_vector(self.model.parameters(), params.to(self.device))
        self.model.eval()
        x, y, size = self.x, self.y, self.batch_size
        loss_sum, correct, squared_error = 0.0, 0, 0.0
        with torch.no_grad():
            for start in range(0, len(y), size):
                output = self.model(x[start : start + size])
                target = y[start : start + size]
                if self.task == "classification":
                    loss_sum += float(nn.functional.cross_entropy(output, target, reduction="sum"))
                    correct += int((output.argmax(1) == target).sum())
                else:
                    squared_error += float(((output.squeeze(-1) - target) ** 2).sum())
        n = len(y)
        if self.task == "classification":
            return Evaluation(loss=loss_sum / n, accuracy=correct / n)
        mse = squared_error / n
        variance = float(((y - y.mean()) ** 2).mean())
        return Evaluation(loss=mse, r2=1.0 - mse / variance if variance > 0 else float("nan"))
