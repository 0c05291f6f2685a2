"""Task kernels on torch's OpenMP team (:mod:`rloss._omp`), or on :func:`rloss._threads.run_tasks`.

A *task kernel* is a ``nogil`` numba function ``kernel(task, slot, *args)``:
``task`` in ``0 .. ntasks``, ``slot`` in ``0 .. nthreads`` names the thread
that runs it (for per-thread scratch rows). Each kernel that runs in parallel
has a *launcher* next to it, three lines that name it::

    @njit(cache=True, nogil=True)
    def quadratic_image_team(nthreads, hdr, args):
        team(quadratic_image, nthreads, hdr, args)

:func:`run` calls the launcher when torch's OpenMP runtime was found. The
launcher calls ``GOMP_parallel`` of that runtime with a small function it
compiles for the kernel and the argument types: every thread of the team
(the caller included) takes a slot number once, then task numbers one at a
time, both from atomic counters in ``hdr`` (``int64[4]``: next task, next
slot, number of tasks, error flag), so a thread that the OS preempts only
delays its own task. The launcher releases the GIL, so the call blocks only
the calling thread. Without the runtime, :func:`run` hands the same kernel
to :func:`rloss._threads.run_tasks`. The tasks, and so the results, are the
same either way; only the threads differ.

A kernel that raises (numba's exceptions: e.g. out of memory) stops its
thread; the other threads finish the remaining tasks and :func:`run` raises
``RuntimeError`` afterwards.
"""

from __future__ import annotations

from collections.abc import Callable

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from rloss import _omp
from rloss._threads import run_tasks

__all__ = ["run", "team", "uses_openmp"]

#: The symbol the launchers call; bound to torch's ``GOMP_parallel`` when found.
SYMBOL = "rloss_torch_GOMP_parallel"
_NEXT_TASK, _NEXT_SLOT, _NTASKS, _ERROR = range(4)

_bound: bool | None = None


def uses_openmp() -> bool:
    """Whether :func:`run` uses torch's OpenMP team in this process (see :mod:`rloss._omp`)."""
    global _bound
    addr = _omp.parallel_address()
    if addr is None:
        return False
    if _bound is None:
        llvm.add_symbol(SYMBOL, addr)
        _bound = True
    return True


@intrinsic
def _fetch_add(typingctx, arr, index):
    """``old = arr[index]; arr[index] += 1`` as one atomic operation; returns ``old``."""
    sig = types.int64(arr, types.intp)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]])
        return builder.atomic_rmw("add", ptr, ir.Constant(ir.IntType(64), 1), "seq_cst")

    return sig, codegen


def _loop(kernel):
    """The body every thread of the team runs: take a slot, then tasks until none is left."""

    def loop(hdr, args):
        slot = _fetch_add(hdr, _NEXT_SLOT)
        ntasks = hdr[_NTASKS]
        while True:
            t = _fetch_add(hdr, _NEXT_TASK)
            if t >= ntasks:
                return
            kernel(t, slot, *args)

    return loop


@intrinsic
def team(typingctx, kernel, nthreads, hdr, args):
    """Run ``kernel(t, slot, *args)`` for every task on a team of ``nthreads`` threads
    (``GOMP_parallel``); the task count is ``hdr[2]``, counters start at 0."""
    if not isinstance(kernel, types.Dispatcher):
        return None
    sig = types.void(kernel, types.int64, hdr, args)

    def codegen(context, builder, signature, cargs):
        _, nth, hdr_v, args_v = cargs
        kernel_t, _, hdr_t, args_t = signature.args
        loop_sig = types.void(hdr_t, args_t)
        cres = context.compile_subroutine(builder, _loop(kernel_t.dispatcher), loop_sig)
        # what the team's threads receive: a pointer to {hdr, args} on this frame
        shared = ir.LiteralStructType(
            [context.get_value_type(hdr_t), context.get_value_type(args_t)]
        )
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        module = builder.module
        body = cgutils.get_or_insert_function(
            module, ir.FunctionType(ir.VoidType(), [i8p]), "rloss_team_" + cres.fndesc.mangled_name
        )
        if body.is_declaration:  # once per module: void body(i8* data), the C ABI libgomp calls
            body.linkage = "internal"
            bb = ir.IRBuilder(body.append_basic_block("entry"))
            ptr = bb.bitcast(body.args[0], shared.as_pointer())
            h = bb.load(cgutils.gep_inbounds(bb, ptr, 0, 0))
            a = bb.load(cgutils.gep_inbounds(bb, ptr, 0, 1))
            status, _ = context.call_internal_no_propagate(bb, cres.fndesc, loop_sig, [h, a])
            with bb.if_then(status.is_error, likely=False):
                hdr_a = context.make_array(hdr_t)(context, bb, h)
                flag = cgutils.get_item_pointer(
                    context, bb, hdr_t, hdr_a, [context.get_constant(types.intp, _ERROR)]
                )
                bb.store(ir.Constant(ir.IntType(64), 1), flag)
            bb.ret_void()
        data = cgutils.alloca_once(builder, shared)
        builder.store(hdr_v, cgutils.gep_inbounds(builder, data, 0, 0))
        builder.store(args_v, cgutils.gep_inbounds(builder, data, 0, 1))
        gomp = cgutils.get_or_insert_function(
            module, ir.FunctionType(ir.VoidType(), [i8p, i8p, i32, i32]), SYMBOL
        )
        builder.call(
            gomp,
            [builder.bitcast(body, i8p), builder.bitcast(data, i8p), builder.trunc(nth, i32),
             ir.Constant(i32, 0)],
        )  # fmt: skip
        return context.get_dummy_value()

    return sig, codegen


def run(
    launcher: Callable, kernel: Callable, ntasks: int, nthreads: int, args: tuple
) -> None:
    """``kernel(t, slot, *args)`` for ``t < ntasks`` on up to ``nthreads`` threads.

    ``launcher`` is the kernel's ``*_team`` function. Slots are ``< min(nthreads,
    ntasks)``. Torch's OpenMP team when :func:`uses_openmp`, else
    :func:`rloss._threads.run_tasks` (also for one thread: no team is started).
    """
    nthreads = max(1, min(int(nthreads), int(ntasks)))
    if nthreads > 1 and uses_openmp():
        hdr = np.zeros(4, np.int64)
        hdr[_NTASKS] = ntasks
        launcher(nthreads, hdr, args)
        if hdr[_ERROR] or hdr[_NEXT_TASK] < ntasks:
            raise RuntimeError(
                f"a lattice task of {getattr(kernel, '__name__', kernel)} failed on torch's "
                "OpenMP threads (out of memory?); RLOSS_TORCH_OPENMP=0 runs them on rloss's "
                "own threads, where the error itself is raised"
            )
        return
    run_tasks(lambda t, slot: kernel(t, slot, *args), ntasks, nthreads)
