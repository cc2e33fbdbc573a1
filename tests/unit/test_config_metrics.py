"""config.py, [metrics]: where Prometheus metrics go, and exact errors for bad values."""

from __future__ import annotations

import pytest

from vramwatch import config
from vramwatch.config import ConfigError, MetricsConfig

PATH = "/x/vramwatch.toml"
ADDR = 'metrics.listen: expected an address such as "127.0.0.1:9835" or "[::1]:9835"'
PROM = "metrics.textfile: node_exporter reads only files named *.prom"


def parse_metrics(body: str) -> MetricsConfig:
    return config.parse("[metrics]\n" + body, PATH).metrics


def error(body: str) -> str:
    with pytest.raises(ConfigError) as raised:
        parse_metrics(body)
    return str(raised.value)


def test_no_metrics_table_means_no_exporter_and_no_textfile() -> None:
    expected = MetricsConfig(listen_host=None, listen_port=None, textfile=None)

    assert expected == config.parse("", PATH).metrics
    assert None is config.parse("", PATH).metrics.listen


def test_listen_and_textfile_are_parsed() -> None:
    metrics = parse_metrics(
        'listen = "127.0.0.1:9835"\n'
        'textfile = "/var/lib/node_exporter/textfile_collector/vramwatch.prom"\n'
    )

    assert (
        MetricsConfig("127.0.0.1", 9835, "/var/lib/node_exporter/textfile_collector/vramwatch.prom")
        == metrics
    )
    assert "127.0.0.1:9835" == metrics.listen


@pytest.mark.parametrize(
    ("text", "host", "port", "listen"),
    [
        ("[::1]:9835", "::1", 9835, "[::1]:9835"),
        ("localhost:1", "localhost", 1, "localhost:1"),
        ("0.0.0.0:65535", "0.0.0.0", 65535, "0.0.0.0:65535"),
    ],
)
def test_listen_forms(text: str, host: str, port: int, listen: str) -> None:
    metrics = parse_metrics(f'listen = "{text}"\n')

    assert (host, port, listen) == (metrics.listen_host, metrics.listen_port, metrics.listen)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            'listen = "9835"',
            f'{ADDR}, got "9835"',
        ),
        (
            'listen = ":9835"',
            f'{ADDR}, got ":9835"',
        ),
        (
            'listen = "127.0.0.1:http"',
            f'{ADDR}, got "127.0.0.1:http"',
        ),
        ('listen = "127.0.0.1:0"', "metrics.listen: the port must be 1 to 65535, got 0"),
        ('listen = "127.0.0.1:70000"', "metrics.listen: the port must be 1 to 65535, got 70000"),
        # str.isdigit() took these, then int() raised: a traceback in check, exit 1 in run
        ('listen = "127.0.0.1:\u00b2"', ADDR + ', got "127.0.0.1:\u00b2"'),
        ('listen = "127.0.0.1:\u0663\u0663"', ADDR + ', got "127.0.0.1:\u0663\u0663"'),
        ('listen = "127.0.0.1:\uff19\uff18"', ADDR + ', got "127.0.0.1:\uff19\uff18"'),
        (
            'listen = "127.0.0.1:' + "9" * 5000 + '"',
            "metrics.listen: the port must be 1 to 65535, got " + "9" * 20 + "…",
        ),
        (
            'listen = "::1:9835"',
            f'{ADDR} (IPv6 in brackets), got "::1:9835"',
        ),
        ('listen = "[nope]:9835"', 'metrics.listen: "nope" is not an IPv6 address'),
        (
            'listen = "a b:9835"',
            f'{ADDR}, got "a b:9835"',
        ),
        ("listen = 9835", "metrics.listen: expected a string, got 9835"),
        (
            'textfile = "vramwatch.prom"',
            'metrics.textfile: expected an absolute path, got "vramwatch.prom"',
        ),
        (
            'textfile = "/var/lib/node_exporter/vramwatch.txt"',
            f'{PROM}, got "/var/lib/node_exporter/vramwatch.txt"',
        ),
        (
            'textfile = "/var/lib/node_exporter/.prom"',
            f'{PROM}, got "/var/lib/node_exporter/.prom"',
        ),
        ("port = 9835", "metrics.port: unknown key"),
        ('lisen = "127.0.0.1:9835"', 'metrics.lisen: unknown key (did you mean "listen"?)'),
    ],
)
def test_bad_metrics_values_name_the_file_the_key_and_the_problem(body: str, message: str) -> None:
    assert f"{PATH}: {message}" == error(body)


def test_metrics_must_be_a_table() -> None:
    with pytest.raises(ConfigError) as raised:
        config.parse('metrics = "127.0.0.1:9835"\n', PATH)

    assert f'{PATH}: metrics: expected a table, got "127.0.0.1:9835"' == str(raised.value)
