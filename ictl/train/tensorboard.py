"""TensorBoard scalar event files through tensorboardX (no TensorFlow needed).

`EventWriter(logdir)` writes one `Event` per logged step holding every scalar of that step as
one `Summary` (tensorboardX's ``FileWriter``: the TFRecord framing, CRC32C and protobufs are
its). `read_events(path)` reads a file back with tensorboardX's protobuf classes and CRC32C
(for tests and tools; TensorBoard itself is not a dependency).
"""
from __future__ import annotations

import os
import struct
import time


class EventWriter:
    """Appends scalar summaries to an events.out.tfevents.* file in ``logdir``."""

    def __init__(self, logdir):
        from tensorboardX import FileWriter  # imported here: the loop's import stays light

        os.makedirs(logdir, exist_ok=True)
        self.logdir = str(logdir)
        self._writer = FileWriter(self.logdir, flush_secs=30)  # writes the file_version event

    def scalars(self, step: int, values: dict[str, float]) -> None:
        from tensorboardX.proto.summary_pb2 import Summary

        summary = Summary(value=[Summary.Value(tag=tag, simple_value=float(v)) for tag, v in values.items()])
        self._writer.add_summary(summary, global_step=int(step), walltime=time.time())

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def read_events(path) -> list:
    """The `Event` protos of one event file, in order; raises ValueError on a bad CRC or framing."""
    from tensorboardX.record_writer import masked_crc32c
    from tensorboardX.proto.event_pb2 import Event

    with open(path, "rb") as f:
        blob = f.read()
    out, pos = [], 0
    while pos < len(blob):
        if pos + 12 > len(blob):
            raise ValueError(f"{path}: truncated record header at byte {pos}")
        header = blob[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        (hcrc,) = struct.unpack("<I", blob[pos + 8:pos + 12])
        data = blob[pos + 12:pos + 12 + length]
        tail = blob[pos + 12 + length:pos + 16 + length]
        if len(data) != length or len(tail) != 4:
            raise ValueError(f"{path}: truncated record at byte {pos}")
        if hcrc != masked_crc32c(header) or struct.unpack("<I", tail)[0] != masked_crc32c(data):
            raise ValueError(f"{path}: corrupt record at byte {pos}")
        out.append(Event.FromString(data))
        pos += 16 + length
    return out
