"""A TOML syntax error names the table as the file writes it, not as a Python
tuple: tomllib says "Cannot declare ('daemon',) twice" (issue 23)."""

from __future__ import annotations

import pytest

from vramwatch.config import ConfigError, parse


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[daemon]\ninterval = "2s"\n[daemon]\n',
            "/x.toml: not valid TOML: Cannot declare [daemon] twice (at line 3, column 8)",
        ),
        (
            "[metrics.extra]\n[metrics.extra]\n",
            "/x.toml: not valid TOML: Cannot declare [metrics.extra] twice (at line 2, column 15)",
        ),
        (
            '["a b".c]\n["a b".c]\n',
            '/x.toml: not valid TOML: Cannot declare ["a b".c] twice (at line 2, column 9)',
        ),
        ("x = [1,\n", "/x.toml: not valid TOML: Invalid value (at end of document)"),
    ],
)
def test_a_toml_error_names_the_table_in_toml(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse(text, "/x.toml")

    assert expected == str(raised.value)
