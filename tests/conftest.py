"""Suite-wide test settings."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _single_thread():
    """Run every test on one intra-op torch thread.

    The CI machines have 2 cores shared by several jobs; with torch's default 2 threads the
    small convolutions in these tests run ~10x slower from contention (measured: 15 Hourglass-20 steps
    2.2 s with 2 threads vs 0.15 s with 1).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
