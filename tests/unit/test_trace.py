"""The trace file: what is written reads back the same; rotation, retention, planted
links, and damage read up to where it is."""

from __future__ import annotations

import dataclasses
import gzip
import os
from pathlib import Path
from typing import Any

import pytest

from tests.unit.builders import MIB, S, one_gpu
from vramwatch import model
from vramwatch.config import ConfigError, parse
from vramwatch.model import GpuProcess, GpuSample, HostSample, Owner, Snapshot, UnitUsage
from vramwatch.record.format import (
    GPU_FIELDS,
    GPU_OPTIONAL,
    HOST_FIELDS,
    OWNER_FIELDS,
    PROCESS_FIELDS,
    SNAPSHOT_FIELDS,
    UNIT_FIELDS,
    TraceError,
    config_record,
    decode_snapshot,
    encode_snapshot,
    recorded_config,
)
from vramwatch.record.recorder import Recorder, RecordingSampler
from vramwatch.record.trace import TraceReader, TraceWriter, rotated_segments, segments

GIB = 1024 * MIB


class FakeWall:
    def __init__(self) -> None:
        self.now = 1_764_655_200 * S  # 2025-12-02T06:00:00Z

    def __call__(self) -> int:
        return self.now


def rich_snapshot(now_ns: int) -> Snapshot:
    """Every field set, hostile names included."""
    owner = Owner(
        "/user.slice/user-1000.slice/user@1000.service/app.slice/x.service",
        "x.service",
        "user@1000",
    )
    gpus = (
        GpuSample(
            0,
            "GPU-a",
            "Tesla T4",
            16 * GIB,
            10 * GIB,
            6 * GIB,
            (
                GpuProcess(7, 3 * GIB, "compute", "foo) Z\nbar", owner),
                GpuProcess(8, None, "mps", "", None),
            ),
        ),
        GpuSample(1, "GPU-b", "Tesla T4", None, None, None, (), "GPU_IS_LOST: gone"),
    )
    host = HostSample(64 * GIB, 20 * GIB, 8 * GIB, 7 * GIB, 1.5, 0.25, None)
    units = {
        "x.service": UnitUsage("x.service", 3 * GIB, {"GPU-a": 3 * GIB}, GIB, (7,), "memory.stat"),
        "y.service": UnitUsage("y.service", None, {}, None, (), ""),
    }
    return Snapshot(
        now_ns, gpus, host, units, "NVML half there", "vramwatch.service", (("x.service", GIB),)
    )


def test_a_snapshot_reads_back_equal_to_what_was_written() -> None:
    snap = rich_snapshot(123 * S)

    back = decode_snapshot(123 * S, encode_snapshot(snap))

    assert snap == back


@pytest.mark.parametrize(
    ("cls", "names"),
    [
        (model.GpuSample, (*GPU_FIELDS, *GPU_OPTIONAL)),
        (model.GpuProcess, PROCESS_FIELDS),
        (model.Owner, OWNER_FIELDS),
        (model.HostSample, HOST_FIELDS),
        (model.UnitUsage, UNIT_FIELDS),
        (model.Snapshot, SNAPSHOT_FIELDS),
    ],
)
def test_the_trace_names_every_field_of_the_model(cls: type, names: tuple[str, ...]) -> None:
    """A field added to the model must be recorded, or replay would run without it."""
    assert sorted(f.name for f in dataclasses.fields(cls)) == sorted(names)


def write_ticks(writer: TraceWriter, wall: FakeWall, n: int, start_s: int = 0) -> None:
    for i in range(n):
        snap = one_gpu((start_s + i) * S, hog_mib=100 + i)
        record: dict[str, Any] = encode_snapshot(snap)
        record.update(k="s", m=snap.now_ns, t=wall() // 10**6)
        writer.write(record, tick=True)
        writer.end_tick()
        wall.now += 2 * S


def test_written_records_read_back_in_order_and_the_file_is_plain_gzip(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl.gz"
    wall = FakeWall()
    writer = TraceWriter(path, 7 * 86400 * S, 1 << 30, wall_ns=wall)
    writer.open()
    write_ticks(writer, wall, 5)
    writer.close()

    records = list(TraceReader(path))

    assert ["h", "s", "s", "s", "s", "s"] == [r["k"] for r in records]
    assert [0, 1, 2, 3, 4] == [r["m"] // S for r in records[1:]]
    assert 6 == len(gzip.decompress(path.read_bytes()).splitlines())


def test_a_trace_still_being_written_reads_up_to_its_last_tick(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl.gz"
    wall = FakeWall()
    writer = TraceWriter(path, 7 * 86400 * S, 1 << 30, wall_ns=wall)
    writer.open()
    write_ticks(writer, wall, 3)
    reader = TraceReader(path, live=True)

    records = list(reader)

    assert 4 == len(records)
    assert (None, True) == (reader.damage, reader.unfinished)
    writer.close()


def test_a_truncated_trace_reads_up_to_the_damage_and_says_where(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl.gz"
    wall = FakeWall()
    writer = TraceWriter(path, 7 * 86400 * S, 1 << 30, wall_ns=wall)
    writer.open()
    write_ticks(writer, wall, 50)
    writer.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    reader = TraceReader(path)

    records = list(reader)

    assert reader.damage is not None
    assert reader.damage.line == len(records) + 1
    assert 10 < len(records) < 51
    assert str(reader.damage).startswith(f"{path}: damaged at line {len(records) + 1} ")


def test_corrupt_bytes_stop_the_reading_at_the_damage(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl.gz"
    wall = FakeWall()
    writer = TraceWriter(path, 7 * 86400 * S, 1 << 30, wall_ns=wall)
    writer.open()
    write_ticks(writer, wall, 50)
    writer.close()
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 40] = b"\xff" * 40
    path.write_bytes(bytes(data))
    reader = TraceReader(path)

    records = list(reader)

    assert reader.damage is not None
    assert len(records) < 51
    assert [r["k"] for r in records] == ["h"] + ["s"] * (len(records) - 1)


def test_a_file_that_is_not_a_trace_is_damaged_at_line_1(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl.gz"
    path.write_bytes(b"hello, world\n")
    reader = TraceReader(path)

    records = list(reader)

    assert [] == records
    assert reader.damage is not None and 1 == reader.damage.line


def test_valid_gzip_that_is_not_json_lines_is_damaged(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"k":"h","v":1}\nnot json\n'))
    reader = TraceReader(path)

    records = list(reader)

    assert 1 == len(records)
    assert reader.damage is not None and 2 == reader.damage.line


def test_segments_rotate_by_size_and_the_oldest_go_beyond_the_size_limit(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl.gz"
    wall = FakeWall()
    max_bytes = 16 * 1024  # segments of 2 KiB
    writer = TraceWriter(path, 7 * 86400 * S, max_bytes, wall_ns=wall)
    writer.open()
    write_ticks(writer, wall, 2000)
    writer.close()

    rotated = rotated_segments(path)
    total = sum(p.stat().st_size for p in rotated) + path.stat().st_size

    assert len(rotated) >= 3
    assert total <= max_bytes
    assert segments(path) == [*rotated, path]
    assert all(next(iter(TraceReader(p)))["k"] == "h" for p in segments(path))


def test_segments_older_than_record_keep_are_deleted(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl.gz"
    wall = FakeWall()
    writer = TraceWriter(path, 3 * 3600 * S, 1 << 30, wall_ns=wall)
    writer.open()
    for _hour in range(6):
        write_ticks(writer, wall, 1)
        wall.now += 3600 * S  # each tick now starts a new segment (an hour at most)
    write_ticks(writer, wall, 1)
    writer.close()

    rotated = rotated_segments(path)

    assert 3 == len(rotated)


def test_a_previous_runs_trace_is_set_aside_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl.gz"
    wall = FakeWall()
    for _run in range(2):
        writer = TraceWriter(path, 7 * 86400 * S, 1 << 30, wall_ns=wall)
        writer.open()
        write_ticks(writer, wall, 2)
        writer.close()

    runs = {next(iter(TraceReader(p)))["run"] for p in segments(path)}

    assert 2 == len(segments(path))
    assert 2 == len(runs)


def test_a_planted_link_at_the_target_is_replaced_never_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    path = tmp_path / "trace.jsonl.gz"
    os.symlink(victim, path)
    wall = FakeWall()
    writer = TraceWriter(path, 7 * 86400 * S, 1 << 30, wall_ns=wall)
    writer.open()
    write_ticks(writer, wall, 2)
    writer.close()

    assert "precious\n" == victim.read_text()
    assert not path.is_symlink()
    assert 3 == len(list(TraceReader(path)))


def test_rotation_and_pruning_stay_in_the_directory_the_trace_was_opened_in(
    tmp_path: Path,
) -> None:
    """Rotation and pruning go through the directory's descriptor, as every write does:
    a directory moved away under the writer, and a link to another one put in its place,
    redirect nothing. The trace goes on where it was opened, and the other directory's
    files, named like old segments, are neither pruned nor joined."""
    opened = tmp_path / "traces"
    opened.mkdir()
    other = tmp_path / "other"
    other.mkdir()
    old = other / "trace-20250101T000000Z.jsonl.gz"  # older than record_keep
    old.write_bytes(b"not ours")
    path = opened / "trace.jsonl.gz"
    wall = FakeWall()
    writer = TraceWriter(path, 3 * 3600 * S, 1 << 30, wall_ns=wall)
    writer.open()
    write_ticks(writer, wall, 1)
    moved = tmp_path / "moved"
    opened.rename(moved)
    opened.symlink_to(other)
    wall.now += 3600 * S  # the next tick starts a new segment, and prunes
    write_ticks(writer, wall, 1)
    writer.close()

    assert [old.name] == os.listdir(other)
    assert b"not ours" == old.read_bytes()
    assert 2 == len(segments(moved / "trace.jsonl.gz"))


def test_the_trace_is_created_with_a_random_name_then_renamed(tmp_path: Path) -> None:
    """A predictable temporary name could be planted; none is left behind either."""
    path = tmp_path / "trace.jsonl.gz"
    for name in (".trace.jsonl.gz.tmp", "trace.jsonl.gz.tmp"):
        os.symlink(tmp_path / "elsewhere", tmp_path / name)
    writer = TraceWriter(path, 7 * 86400 * S, 1 << 30)
    writer.open()
    writer.close()

    assert sorted([".trace.jsonl.gz.tmp", "trace.jsonl.gz", "trace.jsonl.gz.tmp"]) == sorted(
        os.listdir(tmp_path)
    )
    assert not (tmp_path / "elsewhere").exists()


CONFIG = """
[daemon]
interval = "2s"
[[tenant]]
unit = "a.service"
vram = "1GiB"
"""


def test_the_config_is_recorded_as_its_text_and_read_back_equal(tmp_path: Path) -> None:
    path = tmp_path / "vramwatch.toml"
    path.write_text(CONFIG)
    config = parse(CONFIG, path)

    record = config_record(config, "start", True, lambda c: c)

    assert CONFIG == record["text"]
    assert True is recorded_config(record).daemon.dry_run
    assert config.tenants == recorded_config(record).tenants


def test_a_config_file_changed_after_loading_is_not_recorded_as_the_config(
    tmp_path: Path,
) -> None:
    path = tmp_path / "vramwatch.toml"
    path.write_text(CONFIG)
    config = parse(CONFIG, path)
    path.write_text(CONFIG.replace("1GiB", "2GiB"))

    record = config_record(config, "start", False, lambda c: c)

    assert (None, "the file changed after it was loaded") == (record["text"], record["problem"])


class PidsSampler:
    """A sampler that notes, at each sample, whether it was asked for tenants' PIDs."""

    def __init__(self, pids: bool) -> None:
        self.pids = pids
        self.asked: list[bool] = []

    def sample(self, config: Any, now_ns: int, *, recheck: bool = False) -> Snapshot:
        self.asked.append(self.pids)
        return one_gpu(now_ns)

    def close(self) -> None:
        pass


@pytest.mark.parametrize(("own", "expected"), [(False, [True, False, True]), (True, [True] * 3)])
def test_tenants_pids_are_asked_for_while_recording(
    tmp_path: Path, own: bool, expected: list[bool]
) -> None:
    """The trace keeps each tenant's PIDs; the daemon's tick reads them only while
    recording, which a reload switches on and off."""
    recording = parse(CONFIG.replace('interval = "2s"', f'record = "{tmp_path}/trace.gz"'))
    inner = PidsSampler(own)
    recorder = Recorder(lambda *a, **f: None)
    sampler = RecordingSampler(inner, recorder)

    for i, config in enumerate((recording, parse(CONFIG), recording)):
        recorder.configure(config, "reload", False, lambda c: c)
        sampler.sample(config, i * S)
    sampler.close()

    assert expected == inner.asked


def test_a_recording_error_is_logged_once_and_recording_never_raises(tmp_path: Path) -> None:
    said: list[tuple[str, str]] = []
    config_path = tmp_path / "vramwatch.toml"
    text = CONFIG.replace('interval = "2s"', f'record = "{tmp_path}/missing/trace.gz"')
    config_path.write_text(text)
    config = parse(text, config_path)
    recorder = Recorder(lambda name, level, message, **f: said.append((name, message)))
    recorder.configure(config, "start", False, lambda c: c)

    for i in range(3):
        recorder.begin_tick()
        recorder.sampled(one_gpu(i * S))
        recorder.end_tick()

    assert ["record_error"] == [name for name, _ in said]
    assert "guarding goes on without recording" in said[0][1]


def test_a_recording_error_is_said_again_only_when_it_changes_and_its_end_once(
    tmp_path: Path,
) -> None:
    """The trace follows the one log-once rule (vramwatch/once.py): the same failure is
    said once, a failure of another kind again, and recording working again once."""
    said: list[str] = []
    clock = [0]
    target = tmp_path / "traces"
    text = CONFIG.replace('interval = "2s"', f'record = "{target}/trace.gz"')
    config = parse(text, tmp_path / "vramwatch.toml")
    recorder = Recorder(
        lambda name, level, message, **f: said.append(name), mono_ns=lambda: clock[0]
    )

    def ticks(first_s: int) -> None:
        for i in range(3):
            clock[0] = (first_s + i) * S
            recorder.begin_tick()
            recorder.sampled(one_gpu(clock[0]))
            recorder.end_tick()

    recorder.configure(config, "start", False, lambda c: c)  # no directory: an error
    ticks(0)
    target.write_text("not a directory")  # still failing, another way
    ticks(100)
    target.unlink()
    target.mkdir()  # works again
    ticks(200)
    ticks(300)

    assert ["record_error", "record_error", "record_resumed"] == said


def test_a_reload_that_turns_recording_on_records_from_then_with_the_reloaded_config(
    tmp_path: Path,
) -> None:
    """The recorder is built for every daemon; the trace module comes with the first target."""
    config_path = tmp_path / "vramwatch.toml"
    config_path.write_text(CONFIG)
    recorder = Recorder(lambda name, level, message, **f: None)
    recorder.configure(parse(CONFIG, config_path), "start", False, lambda c: c)
    recorder.begin_tick()
    recorder.sampled(one_gpu(0))
    recorder.end_tick()
    text = CONFIG.replace('interval = "2s"', f'record = "{tmp_path}/trace.jsonl.gz"')
    config_path.write_text(text)
    recorder.configure(parse(text, config_path), "reload", False, lambda c: c)
    recorder.begin_tick()
    recorder.sampled(one_gpu(S))
    recorder.end_tick()
    recorder.close()

    records = list(TraceReader(tmp_path / "trace.jsonl.gz"))

    assert [("h", None), ("c", "reload"), ("s", None)] == [(r["k"], r.get("why")) for r in records]
    assert (text, S) == (records[1]["text"], records[2]["m"])


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (
            'record = "trace.gz"',
            (
                "daemon.record: expected an absolute path such as "
                '"/var/lib/vramwatch/trace.jsonl.gz", got "trace.gz"'
            ),
        ),
        ('record_keep = "10m"', 'daemon.record_keep: must be between 1h and 366d, got "10m"'),
        (
            'record_max_size = "100KiB"',
            'daemon.record_max_size: must be at least 1MiB, got "100KiB"',
        ),
    ],
)
def test_record_keys_that_cannot_work_are_config_errors(line: str, error: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse(f"[daemon]\n{line}\n", "/etc/vramwatch.toml")

    assert f"/etc/vramwatch.toml: {error}" == str(raised.value)


def test_record_keys_parse() -> None:
    config = parse(
        '[daemon]\nrecord = "/var/lib/vramwatch/t.gz"\nrecord_keep = "2d"\n'
        'record_max_size = "2GiB"\n'
    )

    assert ("/var/lib/vramwatch/t.gz", 2 * 86400 * S, 2 * GIB) == (
        config.daemon.record,
        config.daemon.record_keep_ns,
        config.daemon.record_max_bytes,
    )


def test_a_rotated_segment_carries_the_config_on_without_calling_it_a_reload(
    tmp_path: Path,
) -> None:
    path = tmp_path / "trace.jsonl.gz"
    wall = FakeWall()
    writer = TraceWriter(path, 7 * 86400 * S, 1 << 30, wall_ns=wall)
    writer.preamble = [{"k": "c", "why": "reload", "text": CONFIG, "path": "x.toml"}]
    writer.open()
    write_ticks(writer, wall, 1)
    writer.rotate()
    writer.close()

    whys = [next(r for r in TraceReader(p) if r["k"] == "c")["why"] for p in segments(path)]

    assert ["reload", "segment"] == whys


def test_a_trace_directory_others_may_write_is_refused_like_the_state_files(
    tmp_path: Path,
) -> None:
    """Traces follow SPEC "Files vramwatch writes" through the same code as the state file."""
    directory = tmp_path / "open"
    directory.mkdir()
    directory.chmod(0o777)
    writer = TraceWriter(directory / "trace.jsonl.gz", 7 * 86400 * S, 1 << 30)

    with pytest.raises(TraceError) as raised:
        writer.open()

    assert "writable by others" in str(raised.value)
    assert [] == os.listdir(directory)
    assert not writer.is_open


def test_a_refused_or_closed_trace_holds_no_descriptor_of_its_directory(tmp_path: Path) -> None:
    """The writer holds its directory open while the trace is; a refusal (retried every
    minute by the recorder) or a close leaves nothing open."""
    directory = tmp_path / "open"
    directory.mkdir()
    directory.chmod(0o777)
    refused = TraceWriter(directory / "trace.jsonl.gz", 7 * 86400 * S, 1 << 30)
    kept = tmp_path / "trace.jsonl.gz"
    before = sorted(os.listdir("/proc/self/fd"))

    for _ in range(3):
        with pytest.raises(TraceError):
            refused.open()
    writer = TraceWriter(kept, 7 * 86400 * S, 1 << 30)
    writer.open()
    writer.close()

    assert before == sorted(os.listdir("/proc/self/fd"))


def test_a_segment_header_names_the_format_and_the_boot(tmp_path: Path) -> None:
    """The boot tells replay whether monotonic times of two runs can be compared."""
    path = tmp_path / "trace.jsonl.gz"
    wall = FakeWall()
    writer = TraceWriter(path, 7 * 86400 * S, 1 << 30, wall_ns=wall, boot_id=lambda: "boot-a")
    writer.open()
    writer.close()

    header = next(iter(TraceReader(path)))

    assert {"k": "h", "v": 3, "seg": 1, "t": 1_764_655_200_000, "boot": "boot-a"} == {
        k: v for k, v in header.items() if k != "run"
    }


def test_a_rotated_segment_repeats_the_config_with_its_own_time(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl.gz"
    wall = FakeWall()
    writer = TraceWriter(path, 7 * 86400 * S, 1 << 30, wall_ns=wall)
    writer.preamble = [{"k": "c", "why": "start", "text": CONFIG, "t": 1, "m": 5}]
    writer.open()
    write_ticks(writer, wall, 1)
    writer.rotate()
    writer.close()

    repeated = next(r for r in TraceReader(path) if r["k"] == "c")

    assert ("segment", (FakeWall().now + 2 * S) // 10**6, None) == (
        repeated["why"],
        repeated["t"],
        repeated.get("m"),
    )


def test_a_release_and_its_result_are_recorded_and_hostile_fields_never_raise(
    tmp_path: Path,
) -> None:
    """Replay shows what a release did (issue 22 item 10): the ``released`` and
    ``release_failed`` entries are recorded, whatever their fields hold."""
    from vramwatch.model import Event

    path = tmp_path / "trace.jsonl.gz"
    text = CONFIG.replace('interval = "2s"', f'record = "{path}"')
    config_path = tmp_path / "vramwatch.toml"
    config_path.write_text(text)
    said: list[str] = []
    wall = FakeWall()
    recorder = Recorder(lambda name, *a, **f: said.append(name), wall_ns=wall, mono_ns=lambda: 9)
    recorder.configure(parse(text, config_path), "start", False, lambda c: c)
    recorder.begin_tick()
    recorder.sampled(one_gpu(7))
    fields = {"tenant": "a.service", "unit": "a.service", "output": "a\x00b\udcff", "gpu": None}
    recorder.event(Event("released", "warning", "released a.service", dict(fields, x=object())))
    recorder.event(Event("restart", "warning", "restarting a.service", fields))
    recorder.event(Event("release_failed", "warning", "release of a.\udcffservice", fields))
    recorder.end_tick()
    recorder.close()

    releases = [r for r in TraceReader(path) if r["k"] == "r"]

    assert [] == said
    assert ["released", "release_failed"] == [r["e"] for r in releases]
    assert (9, wall.now // 10**6, "warning", "release of a.?service") == (
        releases[1]["m"],
        releases[1]["t"],
        releases[1]["lv"],
        releases[1]["msg"],
    )
    assert {"tenant": "a.service", "unit": "a.service", "output": "a\x00b?", "gpu": None} == {
        k: v for k, v in releases[0]["f"].items() if k != "x"
    }
    assert isinstance(releases[0]["f"]["x"], str)
