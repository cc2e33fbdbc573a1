"""The end-to-end harness (a real systemd --user manager, the fake GPU, the
installed vramwatch) for the fault-injection tests."""

from tests.e2e.conftest import bed, e2e_lib, vramwatch_bin  # noqa: F401
