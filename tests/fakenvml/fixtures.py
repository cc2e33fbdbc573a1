"""pytest fixtures for the fake NVML library.

Enable them with ``pytest_plugins = ["tests.fakenvml.fixtures"]`` (in the
top-level ``tests/conftest.py`` or in a test module).

``fake_nvml_lib`` (session): builds the library once and preloads it into the
test process, so pynvml's ``CDLL("libnvidia-ml.so.1")`` loads the fake.
Returns the directory holding it (prepend it to ``LD_LIBRARY_PATH`` for
subprocesses, see ``tests.fakenvml.subprocess_env``).

``fake_nvml`` (function): a ``FakeNvmlState`` whose file lives in ``tmp_path``,
with ``FAKE_NVML_STATE`` pointing at it.  The file is not written yet (no file
means "no driver").  The fake's init refcount is reset before and after each
test, so a test that fails between ``nvmlInit`` and ``nvmlShutdown`` does not
leak an initialized library into the next one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from . import STATE_ENV, FakeNvmlState, build, preload, reset


@pytest.fixture(scope="session")
def fake_nvml_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lib_dir = build(tmp_path_factory.mktemp("fakenvml"))
    preload(lib_dir)
    return lib_dir


@pytest.fixture
def fake_nvml(
    fake_nvml_lib: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FakeNvmlState]:
    state = FakeNvmlState(tmp_path / "nvml-state")
    monkeypatch.setenv(STATE_ENV, str(state.path))
    reset()
    yield state
    reset()
