import shutil
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


@pytest.fixture
def scratch(tmp_path):
    """A folder removed when the test ends, pass or fail: for the real-width checkpoints (0.2-3.6 GB each).

    The reference store keeps its checkpoints for the whole run and pytest keeps the last three runs' folders, so
    real-width ones there added up to ~8 GB per run and ~24 GB on disk; built here, the run's disk peak is the largest
    one (the transformer's 3.6 GB) plus the small ones.
    """
    folder = tmp_path / "scratch"
    folder.mkdir()
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


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
    import framepack_native.teacache
    made = []

    class Recorded(framepack_native.teacache.TeaCache):
        def __post_init__(self):
            super().__post_init__()
            made.append(self)

    monkeypatch.setattr(framepack_native.teacache, "TeaCache", Recorded)
    return made
