import pytest
import torch


@pytest.fixture
def one_torch_thread():
    """Tiny models gain nothing from a second torch thread; on a shared 2-core machine it only adds
    synchronisation and spinning. A module opts in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
