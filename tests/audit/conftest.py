"""Audit tests run on one thread, as CI does, and without Opacus' RDP order notes."""

import warnings

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread_quiet():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order", category=UserWarning)
        yield
    torch.set_num_threads(previous)
