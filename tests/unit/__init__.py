"""Unit tests: pure functions and fixture trees, milliseconds each."""
