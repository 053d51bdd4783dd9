"""The `gradmesh` command (`gradmesh ...` or `python -m coordinator.cli ...`): `main` parses the arguments and
runs a command; `commands` holds the client commands, `serve` and `demo` the two that start a coordinator in
this process, `render` what they print.

May import: everything (it is the top layer): the client for the commands, api.server for serve and demo."""
import os

# gRPC's C core logs failed handshakes and the like to stderr; the CLI reports errors itself, in one line.
# Set before anything below imports grpc.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from coordinator.cli.main import main  # noqa: E402  (the `gradmesh` entry point: coordinator.cli:main)

__all__ = ["main"]
