"""Every contract test runs on one thread, as CI does: bit-for-bit comparisons stay meaningful and
the suite stays fast on small shared machines."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
