"""An attempt's log writer: mpirun's output arrives on stdin and is appended to the attempt's log file.

    python -m coordinator.supervision.log_sink DATA_DIR/logs/<job>/attempt-K.log  < mpirun's stdout

Why a process of its own between mpirun and the file: when the coordinator's disk is full, a write to the
log fails, and mpirun (hydra) ends the whole job when its own stdout write fails. This writer drops what
does not fit instead, and says how much it dropped once the disk takes writes again, so a full disk costs
log lines, never the training. It is not the coordinator's child for long: it outlives a coordinator restart
(re-adoption), and ends by itself when every process that could write to it has ended (end of input).
It carries no attempt tag, so stopping an attempt never kills it before it has written the attempt's last
lines; the launcher waits for it once mpirun is reaped.
"""
from __future__ import annotations

import os
import signal
import sys

CHUNK = 1 << 16


def copy(source_fd: int, path: str) -> None:
    lost = 0
    with open(path, "ab", buffering=0) as log:
        while True:
            data = os.read(source_fd, CHUNK)
            if not data:
                break
            try:
                if lost:
                    log.write(f"\n[gradmesh: {lost} bytes of output lost while the disk was full]\n".encode())
                    lost = 0
                log.write(data)
            except OSError:  # ENOSPC, EDQUOT, EIO: keep reading, or mpirun's write would fail and end the job
                lost += len(data)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m coordinator.supervision.log_sink LOG_FILE", file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # a stop of the attempt must not cut its last lines
    copy(sys.stdin.fileno(), argv[0])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
