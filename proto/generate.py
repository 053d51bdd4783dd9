"""Regenerate the Python gRPC code in coordinator/rpc/ from proto/gradmesh/v1/gradmesh.proto.

    python proto/generate.py            # rewrite the generated files
    python proto/generate.py --check    # exit 1 if the committed files differ from a fresh generation

The proto directory is mapped onto the import path `coordinator/rpc`, so the generated `_pb2_grpc`
module imports `coordinator.rpc.gradmesh_pb2` and the package needs no path hacks. Requires grpcio-tools.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto" / "gradmesh" / "v1"
OUT_PACKAGE = ROOT / "coordinator" / "rpc"
GENERATED = ("gradmesh_pb2.py", "gradmesh_pb2.pyi", "gradmesh_pb2_grpc.py")


def generate(out_root: Path) -> None:
    from grpc_tools import protoc

    args = [
        "protoc",
        f"-Icoordinator/rpc={PROTO_DIR}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        "coordinator/rpc/gradmesh.proto",
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh = Path(tmp) / "coordinator" / "rpc"
        drifted = [n for n in GENERATED
                   if not (OUT_PACKAGE / n).exists() or (OUT_PACKAGE / n).read_bytes() != (fresh / n).read_bytes()]
        if opts.check:
            for name in drifted:
                print(f"drift: coordinator/rpc/{name} differs from proto/ (run python proto/generate.py)")
            return 1 if drifted else 0
        for name in GENERATED:
            (OUT_PACKAGE / name).write_bytes((fresh / name).read_bytes())
    print("generated", ", ".join(GENERATED), "in coordinator/rpc/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
