"""Print, as one JSON line per rank, what configure_blas_threads decided and what BLAS then reports.

    mpirun -n 2 python tests/mpi_programs/threads_report.py [--requested N]
"""
import argparse
import json

from worker.comm import init_comm
from worker.threads import blas_threads_in_use, configure_blas_threads, cores_available

parser = argparse.ArgumentParser()
parser.add_argument("--requested", type=int, default=0)
args = parser.parse_args()

comm = init_comm()
threads, source = configure_blas_threads(comm, requested=args.requested)
print("THREADS " + json.dumps({"rank": comm.rank, "local_size": comm.local_size, "cores": cores_available(),
                               "threads": threads, "source": source, "blas": blas_threads_in_use()}),
      flush=True)
