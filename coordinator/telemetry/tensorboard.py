"""TensorBoard event files from a job's metric history, with no TensorFlow or tensorboard package needed to write.

    path = write_run(Path("tb") / "digits-1", points)    # points: objects with the MetricPoint attributes
    # tensorboard --logdir tb        → one run per job, one scalar per metric (train_loss, val_loss, ...)

The format is TensorBoard's own: a file of TFRecords (length, masked CRC-32C of the length, the bytes, masked
CRC-32C of the bytes), each holding a serialized `tensorflow.Event` protobuf. The first record names the file
version ("brain.Event:2"); then one Event per metric point, at its step and wall time, with a Summary of
simple values. The few protobuf fields needed are encoded here by hand (field numbers from TensorBoard's
event.proto and summary.proto), so `gradmesh metrics --tensorboard` works in a client-only installation.

Each column of `gradmesh metrics --csv` but step and time_unix (the Event's own step and wall time) becomes a
scalar with the column's name; a value not measured at a point (empty in the CSV) is left out. TensorBoard
stores scalars as float32.
"""
from __future__ import annotations

import math
import socket
import struct
import time
from pathlib import Path
from typing import Any, Sequence

SCALARS = ("epoch", "train_loss", "val_loss", "val_accuracy", "samples_per_second", "lr", "attempt")
FILE_VERSION = "brain.Event:2"


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as TFRecord uses."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def record(data: bytes) -> bytes:
    """One TFRecord."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc(length)) + data + struct.pack("<I", masked_crc(data))


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1  # int64 as protobuf encodes it (negatives never occur here)
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def event(wall_time: float, step: int, *, file_version: str | None = None,
          scalars: Sequence[tuple[str, float]] = ()) -> bytes:
    """A serialized Event: wall_time (1, double), step (2, int64), file_version (3) or summary (5)."""
    out = bytes([1 << 3 | 1]) + struct.pack("<d", wall_time) + _varint(2 << 3) + _varint(step)
    if file_version is not None:
        return out + _field_bytes(3, file_version.encode())
    values = b"".join(_field_bytes(1, _field_bytes(1, tag.encode()) + bytes([2 << 3 | 5]) + struct.pack("<f", value))
                      for tag, value in scalars)   # Summary.value (1): Value{tag (1), simple_value (2, float)}
    return out + _field_bytes(5, values)


def point_scalars(point: Any) -> list[tuple[str, float]]:
    """The (tag, value) pairs of one metric point: measured values only."""
    out = []
    for name in SCALARS:
        value = getattr(point, name, None)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            out.append((name, float(value)))
    return out


def write_run(directory: Path, points: Sequence[Any]) -> Path:
    """Write one run (a job's points, in step order) as a new event file in `directory`; returns its path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.gradmesh"
    n = 0
    while path.exists():  # a second export in the same second: a file of its own (TensorBoard reads all)
        n += 1
        path = path.with_name(f"{path.name.rsplit('.gradmesh', 1)[0]}.{n}.gradmesh")
    with open(path, "wb") as f:
        first = points[0].time_unix if points and getattr(points[0], "time_unix", 0) else time.time()
        f.write(record(event(first, 0, file_version=FILE_VERSION)))
        for p in points:
            scalars = point_scalars(p)
            if scalars:
                f.write(record(event(float(p.time_unix or first), int(p.step), scalars=scalars)))
    return path
