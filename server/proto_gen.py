"""Regenerates the Python stubs of `proto/recsys/v1/*.proto` with grpcio-tools.

Run as `python -m server.proto_gen` (or `make proto`). The output depends only on the .proto
files and the pinned grpcio-tools/protobuf versions, so a test can regenerate into a temporary
folder and demand byte-identical stubs: a contract edit without regenerating fails the suite.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent.parent / "proto"
PACKAGE_DIR = Path("recsys") / "v1"


def proto_files(root: Path = PROTO_ROOT) -> list[Path]:
    return sorted((root / PACKAGE_DIR).glob("*.proto"))


def generate(out_root: Path = PROTO_ROOT, proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Writes *_pb2.py, *_pb2.pyi and *_pb2_grpc.py under out_root/recsys/v1; returns their paths."""
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    files = proto_files(proto_root)
    if not files:
        raise FileNotFoundError(f"no .proto files under {proto_root / PACKAGE_DIR}")
    (out_root / PACKAGE_DIR).mkdir(parents=True, exist_ok=True)
    include = str(Path(protoc.__file__).parent / "_proto")
    rel = [str(f.relative_to(proto_root)) for f in files]
    args = [
        "grpc_tools.protoc",
        f"-I{proto_root}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *rel,
    ]
    code = protoc.main(args)
    if code != 0:
        raise RuntimeError(f"protoc failed with exit code {code}: {' '.join(args)}")
    out = []
    for f in files:
        stem = f.stem
        out += [out_root / PACKAGE_DIR / f"{stem}{suffix}" for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")]
    return out


def main(argv: list[str] | None = None) -> int:
    for path in generate():
        print(path.relative_to(PROTO_ROOT.parent))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
