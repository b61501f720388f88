from __future__ import annotations

import pytest
import torch

from securefl.data import load_dataset


@pytest.fixture(scope="session")
def mnist():
    return load_dataset("mnist-sample")


@pytest.fixture(scope="session")
def photos():
    return load_dataset("images")


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
