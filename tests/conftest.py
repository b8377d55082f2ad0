import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.reference.common import ReferenceStore  # noqa: E402

torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))


@pytest.fixture(scope="session")
def reference_store(tmp_path_factory):
    """Random-weight reference checkpoints, built once per run (see tests/reference/)."""
    return ReferenceStore(tmp_path_factory.mktemp("reference"))


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny tensors: on a shared CPU a second thread only adds wake-up latency to every op."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def teacaches(monkeypatch):
    """Every TeaCache the pipeline makes during the test, in order of creation."""
    import framepack_native.pipeline
    made = []

    class Recorded(framepack_native.pipeline.TeaCache):
        def __post_init__(self):
            super().__post_init__()
            made.append(self)

    monkeypatch.setattr(framepack_native.pipeline, "TeaCache", Recorded)
    return made
