"""TensorBoard scalar event files without TensorFlow.

An event file is a TFRecord stream of `Event` protocol buffers. Each record is
    uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)
and the Events used here are {wall_time: double (1), step: int64 (2), file_version: string (3)}
or {wall_time, step, summary (5): Summary{value (1): {tag: string (1), simple_value: float (2)}}}.
The protobuf encoding is written by hand (varints and fixed-width fields): nothing to install.
"""
from __future__ import annotations

import os
import socket
import struct
import time

_CRC_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1  # CRC-32C (Castagnoli), reflected
    _CRC_TABLE.append(_c)


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(num: int, wire: int) -> bytes:
    return _varint((num << 3) | wire)


def _bytes_field(num: int, payload: bytes) -> bytes:
    return _field(num, 2) + _varint(len(payload)) + payload


def encode_event(*, wall_time: float, step: int, file_version: str | None = None,
                 scalars: dict[str, float] | None = None) -> bytes:
    msg = _field(1, 1) + struct.pack("<d", wall_time) + _field(2, 0) + _varint(step)
    if file_version is not None:
        msg += _bytes_field(3, file_version.encode())
    if scalars:
        summary = b"".join(
            _bytes_field(1, _bytes_field(1, tag.encode()) + _field(2, 5) + struct.pack("<f", float(v)))
            for tag, v in scalars.items())
        msg += _bytes_field(5, summary)
    return msg


def frame(data: bytes) -> bytes:
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", masked_crc(header)) + data + struct.pack("<I", masked_crc(data))


def read_records(path) -> list[bytes]:
    """Reads the framed records back, checking both CRCs (for tests and tools)."""
    out = []
    with open(path, "rb") as f:
        blob = f.read()
    pos = 0
    while pos < len(blob):
        header = blob[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        (hcrc,) = struct.unpack("<I", blob[pos + 8:pos + 12])
        data = blob[pos + 12:pos + 12 + length]
        (dcrc,) = struct.unpack("<I", blob[pos + 12 + length:pos + 16 + length])
        if hcrc != masked_crc(header) or dcrc != masked_crc(data):
            raise ValueError(f"{path}: corrupt record at byte {pos}")
        out.append(data)
        pos += 16 + length
    return out


class EventWriter:
    """Appends scalar summaries to events.out.tfevents.<time>.<host> in ``logdir``."""

    def __init__(self, logdir):
        os.makedirs(logdir, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self.path = os.path.join(logdir, name)
        self._f = open(self.path, "ab")
        self._f.write(frame(encode_event(wall_time=time.time(), step=0, file_version="brain.Event:2")))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self._f.write(frame(encode_event(wall_time=time.time(), step=int(step), scalars=values)))

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self._f.close()
