from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.sources.cgroups import Units


@pytest.fixture
def units() -> Iterator[Units]:
    made = Units()
    try:
        yield made
    finally:
        made.close()
