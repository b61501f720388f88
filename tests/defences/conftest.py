from __future__ import annotations

import pytest

from securefl.data import load_dataset


@pytest.fixture(scope="session")
def mnist():
    return load_dataset("mnist-sample")
