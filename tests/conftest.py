"""Shared fixtures. Data from ../shared is optional: tests that need it skip with a reason when it is absent."""
from __future__ import annotations

import importlib.util
import pickle
import signal
from pathlib import Path

import numpy as np
import pytest

from tests.extras import MISSING, import_cause, missing_cause, skip_reason

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared"
CIFAR_DIR = SHARED / "data" / "cifar-10-batches-py"
SEED_CKPT = SHARED / "reference" / "seed_checkpoint.pt"
SEED_OUTPUTS = SHARED / "reference" / "seed_outputs.npz"
SHIPPED = REPO / "weights" / "moe_denoiser.safetensors"

def pytest_report_header(config: pytest.Config) -> str | None:
    if MISSING:
        return (f"not installed: {', '.join(MISSING.values())}; the tests that need them skip (the test extra holds "
                f"them: pip install -e '.[test]')")
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """A test that fails because a package of the test extra is not installed (a base install, `pip install -e .`
    and pytest) is reported as skipped, naming the package and the install command: 39 tests failed there with
    'No module named' or 'needs the Python package', where the other tests needing an extra skip. Only a package
    that is really absent counts (with everything installed, the same failure stays a failure), and only the
    test's own import of it or moe-denoise's words for a feature that needs it: the product importing it where a
    base install runs is a failure (tests/extras.py)."""
    outcome = yield
    report = outcome.get_result()
    if MISSING and report.failed and call.excinfo is not None:
        dist = import_cause(call.excinfo, REPO) or missing_cause(str(report.longrepr) + "".join(
            text for _, text in report.sections))  # the failure, and what the test printed
        if dist:
            report.outcome = "skipped"
            report.longrepr = (str(item.path), (item.location[1] or 0) + 1, f"Skipped: {skip_reason(dist)}")


@pytest.fixture(autouse=True, scope="session")
def ctrl_c_reaches_python():
    """A test run started in the background of a script (``pytest &``, ``nohup ... &``) inherits SIGINT ignored, and
    Python then never turns Ctrl-C into KeyboardInterrupt: the tests that press Ctrl-C (signals_held, bench and
    batch stops) failed there alone. The run gets Python's usual handler, as in a terminal; the commands it starts
    get the default action (an exec resets a handler, not an ignored signal)."""
    previous = signal.getsignal(signal.SIGINT)
    if previous == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(autouse=True, scope="session")
def cache_of_the_run(tmp_path_factory: pytest.TempPathFactory):
    """The cache folder (MOE_DENOISE_CACHE) of the whole run is one of its temporary folders, for the commands it
    runs in this process and those it starts, so that a test that forgets --cache-dir cannot write models into the
    user's ~/.cache/moe-denoise or read models left there. The TensorRT plugin layer's download (tools/trt_layer)
    stays in the user's cache, as pip's does, so that a run does not fetch it again."""
    from moe_base.paths import cache_dir

    users = cache_dir() / "trt-plugin-layer"
    users.mkdir(parents=True, exist_ok=True)
    ours = tmp_path_factory.mktemp("cache")
    (ours / "trt-plugin-layer").symlink_to(users, target_is_directory=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MOE_DENOISE_CACHE", str(ours))
        yield ours


def need(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.skip(f"{what} not found at {path} (it lives in ../shared, which only CI and the team's checkouts have)")
    return path


@pytest.fixture(scope="session")
def seed_ckpt() -> Path:
    return need(SEED_CKPT, "the seed checkpoint")


@pytest.fixture(scope="session")
def seed_outputs() -> Path:
    return need(SEED_OUTPUTS, "the seed reference outputs")


@pytest.fixture(scope="session")
def cifar_dir() -> Path:
    return need(CIFAR_DIR, "CIFAR-10")


def write_fake_cifar(root: Path, per_batch: int = 1010, test: int = 40, seed: int = 0) -> Path:
    """A CIFAR-10 'python version' folder with smooth random images (5 x per_batch training, ``test`` test)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    yy, xx = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")

    def images(n: int) -> np.ndarray:
        fx, fy, ph = rng.uniform(0.05, 0.3, (3, n, 3, 1, 1))
        img = 127.5 + 100 * np.sin(fx * xx + fy * yy + 6 * ph)
        return img.clip(0, 255).astype(np.uint8).reshape(n, 3072)

    for i in range(1, 6):
        with open(root / f"data_batch_{i}", "wb") as f:
            pickle.dump({b"data": images(per_batch), b"labels": [0] * per_batch}, f)
    with open(root / "test_batch", "wb") as f:
        pickle.dump({b"data": images(test), b"labels": [0] * test}, f)
    return root


@pytest.fixture(scope="session")
def fake_cifar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_cifar(tmp_path_factory.mktemp("cifar") / "cifar-10-batches-py")


@pytest.fixture(scope="session")
def random_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seed-architecture model with random weights, saved like a training run (safetensors + JSON)."""
    import torch

    from moe_model import SmallViT
    from moe_model.checkpoint import save_weights

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "random.safetensors"
    save_weights(SmallViT("seed"), path, {"note": "random weights for tests"})
    return path


@pytest.fixture
def in_threads():
    """``in_threads(fn, count)``: ``fn()`` in ``count`` threads started together, joined; the exceptions they
    raised (a list, empty when none did). For the tests of what two threads at once must not break."""
    import threading

    def run(fn, count: int) -> list[BaseException]:
        errors: list[BaseException] = []
        start = threading.Barrier(count, timeout=30)

        def one() -> None:
            try:
                start.wait()
                fn()
            except BaseException as e:  # noqa: BLE001 - the test reads them
                errors.append(e)

        threads = [threading.Thread(target=one) for _ in range(count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return errors

    return run


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`gpu` tests skip without a CUDA GPU and `trt` tests without TensorRT, each with the reason."""

    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    has_trt = importlib.util.find_spec("tensorrt") is not None
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)"))
        if "trt" in item.keywords and not has_trt:
            item.add_marker(pytest.mark.skip(reason="needs TensorRT (the tensorrt package is not importable here; "
                                                    "pip install 'moe-denoise[trt]' on a GPU machine)"))
