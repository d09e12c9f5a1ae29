import os
import signal
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))


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


@pytest.fixture(autouse=True, scope="session")
def _private_cache_home(tmp_path_factory):
    """Device caches (XNNPACK weight caches) go to a temporary directory, not ~/.cache."""
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))


@pytest.fixture
def default_signals():
    """SIGTERM's and SIGINT's defaults, as a command started from a shell has them; put back after."""
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGTERM, previous)
    signal.signal(signal.SIGINT, previous_int)
