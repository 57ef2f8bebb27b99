"""Regenerate the agent protocol's Python stubs from proto/ (run by `./taskw proto`).

The stubs are committed, so the executor and the agent import them without a build step
and an image needs no protoc. This script is the one way they are written: grpcio-tools
for the messages (`*_pb2.py`) and the service (`*_pb2_grpc.py`), mypy-protobuf for their
types (`.pyi`), at the exact versions pinned in the root dev group. The output depends on
nothing but those versions and the .proto files (no timestamps, no absolute paths), so
tests/unit/test_proto_stubs.py regenerates into a temporary folder and fails when the
committed files differ.

It lives beside the lib, not in it: grpcio-tools is a developer's tool, never a runtime
dependency of a service.

Usage: python libs/agentproto/generate.py [--out SRC_ROOT]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO_ROOT / "proto"
LIB_SRC = Path(__file__).resolve().parent / "src"
# Every .proto under proto/chiffon/agentproto/ becomes a module of chiffon.agentproto.
PROTO_PACKAGE = Path("chiffon") / "agentproto"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


class GenerationFailed(RuntimeError):
    """protoc refused the .proto files; its own message says why."""


def proto_files() -> list[Path]:
    """The .proto files to compile, relative to proto/, in a stable order."""
    return sorted(
        path.relative_to(PROTO_ROOT) for path in (PROTO_ROOT / PROTO_PACKAGE).rglob("*.proto")
    )


def is_generated(path: Path) -> bool:
    """True for a file this script writes (and so may delete before writing again)."""
    return path.name.endswith(GENERATED_SUFFIXES)


def _plugin(name: str) -> str:
    """The path of a protoc plugin installed beside this interpreter (the venv's bin/)."""
    beside_python = Path(sys.executable).parent / name
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which(name)
    if found is None:
        raise GenerationFailed(f"{name} is not installed; run ./taskw (it syncs the dev group)")
    return found


def _well_known_includes() -> str:
    """grpcio-tools' copy of google/protobuf/*.proto (struct.proto is imported)."""
    try:
        return str(resources.files("grpc_tools") / "_proto")
    except ModuleNotFoundError:
        raise GenerationFailed(
            "grpcio-tools is not installed; run ./taskw (it syncs the dev group)"
        ) from None


def run_protoc(out_dir: Path) -> None:
    """Compile every .proto into out_dir (a source root: out_dir/chiffon/agentproto/...)."""
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--proto_path={_well_known_includes()}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *(str(path) for path in proto_files()),
    ]
    completed = subprocess.run(command, cwd=PROTO_ROOT, capture_output=True, text=True)
    if completed.returncode != 0:
        raise GenerationFailed(completed.stderr.strip() or f"protoc exited {completed.returncode}")


def generate(src_root: Path) -> list[Path]:
    """Write the stubs under src_root, replacing the generated files already there.

    Hand-written files (the packages' __init__.py, py.typed) are left alone; a generated
    file whose .proto is gone is removed. Returns the written files, relative to src_root.
    """
    with tempfile.TemporaryDirectory(prefix="chiffon-proto-") as scratch:
        scratch_root = Path(scratch)
        run_protoc(scratch_root)
        written = sorted(
            path.relative_to(scratch_root)
            for path in scratch_root.rglob("*")
            if path.is_file() and is_generated(path)
        )
        target_package = src_root / PROTO_PACKAGE
        if target_package.exists():
            for stale in target_package.rglob("*"):
                if stale.is_file() and is_generated(stale):
                    stale.unlink()
        for relative in written:
            destination = src_root / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(scratch_root / relative, destination)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=LIB_SRC,
        help="source root to write into (default: libs/agentproto/src)",
    )
    args = parser.parse_args(argv)
    try:
        written = generate(args.out)
    except GenerationFailed as error:
        print(f"proto: {error}", file=sys.stderr)
        return 1
    for relative in written:
        print(f"proto: wrote {relative.as_posix()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
