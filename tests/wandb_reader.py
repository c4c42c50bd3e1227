"""Reads a W&B offline run back, for tests: wandb 0.31 ships no reader, so this parses the documented `.wandb`
format (a ":W&B" header, then LevelDB-log framing in 32 KiB blocks; each payload a `wandb_internal_pb2.Record`)."""

import json
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

_BLOCK, _HEADER = 32768, 7
_FULL, _FIRST, _MIDDLE = 1, 2, 3


@dataclass
class OfflineRun:
    run_id: str
    history: list[dict]  # one dict per log() call, with _step
    exited: bool  # the run was finished (its exit record is there)


def records(path: Path):
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:_HEADER])
    assert ident == b":W&B" and magic == 0xBEE1, path
    position, pending = _HEADER, b""
    while position + _HEADER <= len(data):
        left = _BLOCK - position % _BLOCK
        if left < _HEADER:  # a block's trailing padding
            position += left
            continue
        checksum, length, kind = struct.unpack("<IHB", data[position : position + _HEADER])
        if checksum == length == kind == 0:
            break
        payload = data[position + _HEADER : position + _HEADER + length]
        position += _HEADER + length
        assert zlib.crc32(payload, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF == checksum, "corrupt record"
        if kind in (_FIRST, _MIDDLE):
            pending = payload if kind == _FIRST else pending + payload
            continue
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload if kind == _FULL else pending + payload)
        yield record


def offline_runs(wandb_dir: Path) -> list[OfflineRun]:
    runs = []
    for path in sorted(Path(wandb_dir).glob("offline-run-*/run-*.wandb")):
        found = list(records(path))
        run_id = next(r.run.run_id for r in found if r.WhichOneof("record_type") == "run")
        history = [{(item.key or "/".join(item.nested_key)): json.loads(item.value_json) for item in r.history.item}
                   for r in found if r.WhichOneof("record_type") == "history"]
        runs.append(OfflineRun(run_id, history, any(r.WhichOneof("record_type") == "exit" for r in found)))
    return runs
