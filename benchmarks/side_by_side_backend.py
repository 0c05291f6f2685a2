"""``../shared/bench/side_by_side.py`` with our side on a chosen lattice backend.

The shared harness times ``DenseCRFLoss`` with the device's default backend (numba on
the CPU). This wrapper loads it from the given path, changes only the loss constructor
of our child process to pass ``backend=...``, and runs its ``main`` unchanged: the same
inputs, the same interleaving of reference and ours, the same ratio and gradient check.

    .venv/bin/python benchmarks/side_by_side_backend.py ../shared/bench/side_by_side.py \\
        torch --ref /tmp/rloss-ref/build_omp --env PYTHONPATH=$PWD/src

Everything after the backend name goes to ``side_by_side.py``, except ``--threads N``
(this wrapper's own option): both sides run on N threads instead of the harness's 2
(the reference child sets ``OMP_NUM_THREADS`` before its extension loads OpenMP, ours
calls ``rloss._threads.set_threads``: torch's count and numba's, which the CPU lattice
task pool of both the numba and the torch backend uses). On a machine shared with
other jobs, one thread per side measures the work itself; two threads also measure how
each side copes with waiting for a second core (one parallel region per call for the
reference, tasks of whole images on a sleeping pool for ours).
"""

from __future__ import annotations

import importlib.util
import sys

#: The loss constructor's closing text in the harness's child code.
_CALL_END = "scale_factor=1.0)"


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] not in ("torch", "numba", "exact"):
        print(__doc__)
        print("usage: side_by_side_backend.py PATH/side_by_side.py {torch,numba,exact} ARGS...")
        return 2
    path, backend, rest = argv[0], argv[1], list(argv[2:])
    threads = None
    if "--threads" in rest:
        at = rest.index("--threads")
        threads = int(rest[at + 1])
        del rest[at : at + 2]
    spec = importlib.util.spec_from_file_location("side_by_side", path)
    if spec is None or spec.loader is None:
        print(f"cannot load {path}")
        return 2
    harness = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(harness)
    if harness.CHILD_OURS.count(_CALL_END) != 1:
        print(f"{path}: the loss constructor is not where this wrapper expects it")
        return 2
    harness.CHILD_OURS = harness.CHILD_OURS.replace(
        _CALL_END, f"scale_factor=1.0, backend={backend!r})"
    )
    if threads is not None:
        if harness.CHILD_OURS.count("torch.set_num_threads(2)") != 1:
            print(f"{path}: our child's thread count is not where this wrapper expects it")
            return 2
        # torch and numba: the CPU lattice's task pool takes numba's count (both backends)
        harness.CHILD_OURS = harness.CHILD_OURS.replace(
            "torch.set_num_threads(2)",
            f"import rloss._threads; rloss._threads.set_threads({threads})",
        )
        harness.CHILD_REF = (
            f"import os; os.environ['OMP_NUM_THREADS'] = '{threads}'\n" + harness.CHILD_REF
        )
    print(f"our side: DenseCRFLoss(..., backend={backend!r}); threads: {threads or 2} per side")
    sys.argv = [path, *rest]
    return int(harness.main())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
