"""The line every benchmark prints first: which CPU, how many cores, when, and how busy the machine was.

    print(machine_line())   # "machine: AMD EPYC (2 cores), OpenBLAS Haswell; 2026-12-07 17:40 UTC; load 1.9"

Figures from different machines are not comparable (the team's sessions land on Intel Sapphire Rapids and AMD
Zen 4 VMs alike), and a shared machine's load disturbs wall-clock figures; so every table names both.
"""
from __future__ import annotations

import os
import platform
import time


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def blas_kernel() -> str:
    """OpenBLAS's core type as numpy's OpenBLAS reports it (its kernels decide the bits and the speed)."""
    try:
        import numpy  # noqa: F401 - loads numpy's OpenBLAS, so threadpoolctl can see it
        from threadpoolctl import threadpool_info
        for pool in threadpool_info():
            if pool.get("internal_api") == "openblas":
                return f"OpenBLAS {pool.get('version', '')} {pool.get('architecture', '')}".strip()
    except Exception:  # noqa: BLE001 - a description, never a reason for the benchmark to fail
        pass
    return "BLAS unknown"


def machine_line() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"machine: {cpu_model()} ({os.cpu_count()} cores), {blas_kernel()}; "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; 1-min load {load:.1f}")


if __name__ == "__main__":
    print(machine_line())
