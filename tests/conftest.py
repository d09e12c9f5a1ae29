import gc
import os
import signal
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def pytest_configure(config):
    """Under pytest-xdist (README's `-n logical`), share the CPUs between the workers: torch's
    OpenMP pool and numpy's OpenBLAS otherwise each start one busy thread per CPU in every
    worker, and spinning pools that outnumber the CPUs run several times slower (a --prune
    auto conversion took 3x its serial time). Set in the controller, before the workers start,
    so their imports read it; an explicit setting in the environment wins."""
    workers = getattr(config.option, "numprocesses", None)
    if workers and not os.environ.get("PYTEST_XDIST_WORKER"):
        share = str(max(1, len(os.sched_getaffinity(0)) // int(workers)))
        for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(variable, share)


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory):
    """build(arch, task) -> directory of a tiny random checkpoint, cached per session."""
    from tiny_models import build_tiny_model

    cache = {}

    def build(arch: str, task: str) -> Path:
        key = (arch, task)
        if key not in cache:
            cache[key] = build_tiny_model(tmp_path_factory.mktemp(f"{arch}-{task}"), arch, task)
        return cache[key]

    return build


@pytest.fixture(scope="session")
def tiny_rpi5(tiny_model_factory, tmp_path_factory):
    """The tiny BERT (feature extraction) converted for rpi5 (ONNX and TFLite artifacts), once per
    session: shared by the modules that only read it (a test that edits a directory copies it)."""
    from converters import ConvertConfig, convert

    out = tmp_path_factory.mktemp("rpi5-tiny") / "rpi5"
    convert(ConvertConfig(model=tiny_model_factory("bert", "feature-extraction"), target="rpi5", out=out,
                          latency_runs=1, latency_rounds=1))
    return out


@pytest.fixture(autouse=True, scope="session")
def _private_cache_home(tmp_path_factory):
    """Device caches (XNNPACK weight caches) go to a temporary directory, not ~/.cache."""
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))


@pytest.fixture(autouse=True)
def _collector_not_left_frozen():
    """SharedInputs.load freezes the loaded heap until close() (converters/_shared.py): a test that
    loads without closing would leave the rest of its worker's tests with a frozen collector."""
    yield
    if gc.get_freeze_count():
        gc.unfreeze()
        pytest.fail("the test left the garbage collector frozen: close() the SharedInputs it loaded")


@pytest.fixture
def default_signals():
    """SIGTERM's and SIGINT's defaults, as a command started from a shell has them; put back after."""
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGTERM, previous)
    signal.signal(signal.SIGINT, previous_int)
