"""The worker: what every rank of a training job runs (`python -m worker`, worker/__main__.py).

It is a flat folder of one-page modules. A family of modules shares a name prefix and has one face that
callers import; the others sit below the face and never import it back:

  spec.py            the job spec, the one contract shared with the coordinator: the face over
                     spec_parsing.py (read, check) over spec_shape.py (every key with its default)
  mlp.py, optim.py   the math: forward, backward (mlp_bylayer.py: micro-batches layer by layer), the
                     optimizers; stepsync.py, the step's one reduction;
                     stepexact.py, the exact step (the same bits at any rank count) over microbatch.py (the
                     parts and the tree that adds them) and sgemm.py (GEMM shortcuts probed to keep its bits)
  data.py            sources, split, sampler; over the formats csvsource.py and idx.py, over datacache.py
                     (converted once) and data_paths.py (DataError, the data-roots check)
  comm.py            every MPI call: the face (init_comm, the Comm protocol) over comm_mpi.py, comm_serial.py,
                     comm_buffers.py, comm_abort.py, comm_exact.py (the exact combine over MPI; comm_overlap.py, the
                     same per layer during backward; bf16.py, the bfloat16 rounding of their bf16 wire), and
                     the helpers hangwatch.py, shmreduce.py, shmexact.py (the exact combine in shared memory), mpiwait.py
  blas.py, threads.py  the BLAS kernel (chosen before numpy loads) and thread count of a rank
  train.py           the loop, with hooks.py (what it tells the outside), checkpoint.py, failure.py (exit
                     codes, typed failures) and faults.py (faults injected for tests)
  report.py          rank 0's link to the coordinator over gRPC, with checkpoint_uploads.py,
                     checkpoint_fetch.py, coordinator_link.py and register.py
  inference.py, onnx_export.py  a trained checkpoint applied to data, or exported

Rules: imports go downward only, never in a circle (not even through a function-local import); only the
comm modules touch MPI (comm_mpi.py alone imports mpi4py); mlp.py knows nothing of MPI, gRPC or files; the
spec modules import nothing beyond the standard library, because the coordinator imports them. A module a
rank imports before the BLAS kernel is chosen (__main__, comm*, spec*, checkpoint, blas, report) does not
import numpy at its top: those imports sit in functions, each saying so, and tests/test_blas.py holds it.

Why flat rather than subpackages: the families are small (two to eight modules) and their prefixes already
group them in a listing; the coordinator, the launcher's `python -m worker`, tests and benchmarks name these
modules by their `worker.X` paths; and a package's `__init__.py` that re-exported its members would import
them all (numpy with them) wherever one was needed, which the rule above forbids before the BLAS choice.
"""
