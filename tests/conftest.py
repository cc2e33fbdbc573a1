"""Fixture plugins shared by every test layer."""

pytest_plugins = [
    "tests.fakenvml.fixtures",
    "tests.sandbox.fixtures",
    "tests.packaging.debbuild",
]
