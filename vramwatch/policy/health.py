"""Source health: sampling_error, sampling_recovered, gpu_lost and nvml_hung, each said
once when it starts or changes, reminded while it lasts, and said when it recovers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vramwatch.model import (
    RAM,
    VRAM,
    Snapshot,
)
from vramwatch.policy.history import REMINDER_NS, Builder
from vramwatch.policy.readings import gpu_fields, gpu_key
from vramwatch.units import format_duration


def track_errors(b: Builder, snapshot: Snapshot) -> None:
    """sampling_error when a source starts failing or fails differently; sampling_recovered."""
    current: dict[str, tuple[str, dict[str, Any]]] = {}
    if snapshot.nvml_error is not None:
        current["nvml"] = (snapshot.nvml_error, {"resource": VRAM})
    hung = _track_hung(b, snapshot)
    for gpu in snapshot.gpus:
        if hung:
            break  # every GPU is unknown because NVML is stuck: nvml_hung says it once
        if gpu.error is not None:
            fields: dict[str, Any] = {"resource": VRAM, **gpu_fields(gpu)}
            if gpu.lost:
                fields["lost"] = True
            current[gpu_key(gpu.uuid)] = (gpu.error, fields)
    if snapshot.host.error is not None:
        current["host"] = (snapshot.host.error, {"resource": RAM})
    if snapshot.engine_error is not None:
        # Only container tenants are blinded: their usage is unknown, units read on.
        current["engine"] = (snapshot.engine_error, {"source": "engine"})
    for key, (error, fields) in sorted(current.items()):
        if fields.get("lost"):
            _track_lost(b, key, error, fields)
            continue
        told = b.errors_told.get(key)
        changed = b.errors.get(key) != error
        # A lasting fault of one GPU or of host memory is repeated like a lasting breach.
        remind = key != "nvml" and told is not None and snapshot.now_ns - told >= REMINDER_NS
        if changed or remind:
            b.errors[key] = error
            b.error_fields[key] = fields
            b.errors_told[key] = snapshot.now_ns
            if key == "nvml":
                # No driver is a state of the host, not a fault of vramwatch: say it once.
                b.event("sampling_error", "warning", error, error=error, **fields)
                continue
            b.event(
                "sampling_error",
                "error",
                ("still: " if not changed else "")
                + f"cannot read {_source_name(key, fields)}: {error}; no action on it until it "
                "reads cleanly again",
                error=error,
                **fields,
            )
    for key in sorted(set(b.errors) - set(current)):
        if key == HUNG_KEY:
            continue
        if key.startswith("gpu:") and (snapshot.nvml_error is not None or hung):
            continue  # NVML as a whole is down: nothing can be said of this GPU yet
        del b.errors[key]
        b.errors_told.pop(key, None)
        fields = dict(b.error_fields.pop(key, {}))
        b.event(
            "sampling_recovered",
            "info",
            f"{_source_name(key, fields)} reads cleanly again",
            **fields,
        )


def _track_lost(b: Builder, key: str, error: str, fields: dict[str, Any]) -> None:
    """A lost GPU (GPU_IS_LOST, RESET_REQUIRED) is said once: restarting tenants cannot
    bring it back, nothing is enforced on it, and a person must reset the GPU or reboot."""
    if b.error_fields.get(key, {}).get("lost"):
        b.errors[key] = error  # still lost; the wording of NVML's error may vary
        return
    b.errors[key] = error
    b.error_fields[key] = fields
    b.errors_told[key] = 0
    b.event(
        "gpu_lost",
        "error",
        f"{_source_name(key, fields)} is lost ({error}): no VRAM enforcement on it until it "
        "reads cleanly again; it needs a GPU reset or a reboot (check dmesg for Xid errors)",
        error=error,
        **fields,
    )


HUNG_KEY = "nvml_hung"


def _track_hung(b: Builder, snapshot: Snapshot) -> bool:
    """nvml_hung when an NVML call misses its deadline, then reminders; recovered when it
    answers. True while it is stuck (every GPU in the snapshot is then unknown)."""
    hung_ns = snapshot.nvml_hung_ns
    now = snapshot.now_ns
    if hung_ns is None:
        if HUNG_KEY in b.errors:
            del b.errors[HUNG_KEY]
            b.errors_told.pop(HUNG_KEY, None)
            since = int(b.error_fields.pop(HUNG_KEY, {}).get("since_ns", now))
            b.event(
                "sampling_recovered",
                "info",
                f"NVML answers again after {format_duration(now - since)}; GPUs guarded again",
                resource=VRAM,
                hung_ns=now - since,
            )
        return False
    told = b.errors_told.get(HUNG_KEY)
    if told is None or now - told >= REMINDER_NS:
        b.errors[HUNG_KEY] = "hung"
        b.error_fields.setdefault(HUNG_KEY, {"since_ns": now - hung_ns})
        b.errors_told[HUNG_KEY] = now
        b.event(
            "nvml_hung",
            "error",
            ("still: " if told is not None else "")
            + f"NVML has not answered for {format_duration(hung_ns)}: every GPU is unknown "
            "and GPU sampling is skipped until it answers; host RAM is still guarded",
            resource=VRAM,
            hung_ns=hung_ns,
            gpus=len(snapshot.gpus),
        )
    return True


def _source_name(key: str, fields: Mapping[str, Any]) -> str:
    if key == "nvml":
        return "NVML"
    if key == "host":
        return "host memory"
    if "mig" in fields:
        return f"GPU {fields['gpu']} MIG {fields['mig']} ({key[4:]})"
    if key == "engine":
        return "the container Engine API"
    if "gpu" in fields:
        return f"GPU {fields['gpu']} ({key[4:]})"
    return f"GPU {key[4:]}"
