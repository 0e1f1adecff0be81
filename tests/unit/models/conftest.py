import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # The decoders under test are tiny: on 2 busy cores, 2 threads ran them ~6x slower than one.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
