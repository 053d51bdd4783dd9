"""One rank stops making progress before a collective; the others' hang watchdogs must abort the job.

    mpirun -n 3 python tests/mpi_programs/hang.py --rank 1 --step 5 --how sigstop --timeout 2

--how sigstop: the rank stops itself with SIGSTOP (cannot answer probes: "no answer").
--how sleep:   the rank sleeps in Python (its watchdog thread still answers: "busy outside any collective").
--rank -1:     nobody goes silent by itself (a test stops a rank from outside, e.g. with SIGSTOP).
--how exit:    the rank leaves the loop and exits normally (sys.exit(0)), so it waits in the exit barrier
               while the others wait in their next allreduce: the programs diverged.
--how linkdown: the rank takes its network device down (`ip link set DEV down`, inside a network
               namespace of tests/test_multihost.py) and goes on into the collective: cut off.
"""
import argparse
import os
import signal
import subprocess
import sys
import time

import numpy as np

from worker.comm import init_comm

parser = argparse.ArgumentParser()
parser.add_argument("--rank", type=int, required=True)
parser.add_argument("--step", type=int, required=True)
parser.add_argument("--how", choices=("sigstop", "sleep", "linkdown", "exit"), required=True)
parser.add_argument("--device", default="gm0", help="device for --how linkdown")
parser.add_argument("--ready-file", default=None, help="rank 0 creates it once collectives are flowing")
parser.add_argument("--timeout", type=float, required=True)
parser.add_argument("--shared", action="store_true", help="reduce comm.reduction_buffer (host-shared memory)")
args = parser.parse_args()

comm = init_comm(hang_timeout_s=args.timeout)
grad = comm.reduction_buffer(100_000, np.float32) if args.shared else np.zeros(100_000, np.float32)
grad[:] = 1.0
for step in range(100_000):
    if step == 3 and comm.rank == 0 and args.ready_file:
        open(args.ready_file, "w").close()  # the collectives are flowing: a test may now stop a rank
    if comm.rank == args.rank and step == args.step:
        print(f"rank {comm.rank} going silent ({args.how}) at step {step}", flush=True)
        if args.how == "sigstop":
            os.kill(os.getpid(), signal.SIGSTOP)
        elif args.how == "exit":
            sys.exit(0)
        elif args.how == "linkdown":
            subprocess.run(["ip", "link", "set", args.device, "down"], check=True, timeout=10)
        else:
            time.sleep(3600)
    comm.allreduce_sum_(grad)
    grad[:] = 1.0
    time.sleep(0.005)
print(f"rank {comm.rank} finished", flush=True)
