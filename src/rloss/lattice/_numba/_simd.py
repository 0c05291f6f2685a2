"""Fixed-width vector operations on lattice rows, emitted as LLVM vector IR.

Lattice rows hold ``C`` value channels padded to ``padded(C)``, a multiple of
:data:`LANES` (the padding columns stay zero). Every row operation of the
splat, blur and slice is one of the few below, applied to blocks of
``LANES`` consecutive channels: one ``<LANES x float>`` load/multiply/add/store
each, whatever the CPU (LLVM lowers an 8-wide vector to one AVX register, two
SSE registers or one half of an AVX-512 register).

Why not plain loops: numba does not run LLVM's SLP vectoriser, and its loop
vectoriser, given a channel loop of a run-time length such as 22, emits a
64-wide main loop that never runs, an 8-wide epilogue and a scalar
remainder with aliasing checks around them: measured on the DenseCRF splat
(AMD EPYC Zen 5, 65536 pixels x 6 vertices x 22 channels), 4.1 ms per image
against 0.9 ms with these operations. The arithmetic is the scalar code's,
element by element (separate multiply and add, no FMA contraction), so the
results are bitwise those of the scalar loops they replace.

Two more move data between the ``(C, pixels)`` layout of the values and
the pixel-major rows: :func:`vtranspose` (an ``LANES x LANES`` block by
shuffles) and :func:`vgather` (a pixel's d+1 weighted rows summed in a
register). Written as scalar loops over ``x[n, c, q0 + b]``, numba guarded
every access against negative indices and nothing vectorised (AMD EPYC Zen 4:
4.4 ms per 256² image of 21 classes for the splat's transpose alone).

Arrays are flat (1-D, C-contiguous) and indices are element offsets; there
is no bounds check: the callers own the layout (``row * width + block``).
"""

from __future__ import annotations

import platform

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

#: Channels per vector block (rows are padded to a multiple of it).
LANES = 8

_I32 = ir.IntType(32)


def padded(channels: int) -> int:
    """Row width for ``channels`` value channels: the next multiple of :data:`LANES`."""
    return -(-int(channels) // LANES) * LANES


def _vec_ptr(context, builder, aryty, ary, idx):
    """Pointer to the ``LANES``-vector starting at element ``idx`` of a flat array."""
    a = context.make_array(aryty)(context, builder, ary)
    elt = context.get_data_type(aryty.dtype)
    vty = ir.VectorType(elt, LANES)
    p = builder.gep(a.data, [idx])
    return builder.bitcast(p, vty.as_pointer()), vty


def _broadcast(builder, vty, value):
    v = builder.insert_element(ir.Constant(vty, ir.Undefined), value, ir.Constant(_I32, 0))
    mask = ir.Constant(ir.VectorType(_I32, LANES), [0] * LANES)
    return builder.shuffle_vector(v, ir.Constant(vty, ir.Undefined), mask)


def _align(aryty) -> int:
    return aryty.dtype.bitwidth // 8


def _check(*arys):
    for a in arys:
        if not (isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C"):
            raise TypeError("vector row operations take flat C-contiguous arrays")
        if not isinstance(a.dtype, types.Float) or a.dtype != arys[0].dtype:
            raise TypeError("vector row operations take float arrays of one dtype")


@intrinsic
def vaxpy(typingctx, dst, di, src, si, w):
    """``dst[di : di+LANES] += w * src[si : si+LANES]``."""
    _check(dst, src)
    sig = types.void(dst, types.int64, src, types.int64, dst.dtype)

    def codegen(context, builder, signature, args):
        d, di_, s, si_, w_ = args
        al = _align(signature.args[0])
        dp, vty = _vec_ptr(context, builder, signature.args[0], d, di_)
        sp, _ = _vec_ptr(context, builder, signature.args[2], s, si_)
        acc = builder.load(dp, align=al)
        val = builder.load(sp, align=al)
        prod = builder.fmul(_broadcast(builder, vty, w_), val)
        builder.store(builder.fadd(acc, prod), dp, align=al)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def vblur(typingctx, dst, di, src, vi, n1, n2, half):
    """``dst[di:+LANES] = src[vi:+LANES] + half * (src[n1:+LANES] + src[n2:+LANES])``."""
    _check(dst, src)
    sig = types.void(dst, types.int64, src, types.int64, types.int64, types.int64, dst.dtype)

    def codegen(context, builder, signature, args):
        d, di_, s, vi_, n1_, n2_, h_ = args
        al = _align(signature.args[0])
        dp, vty = _vec_ptr(context, builder, signature.args[0], d, di_)
        sty = signature.args[2]
        a = builder.load(_vec_ptr(context, builder, sty, s, vi_)[0], align=al)
        b = builder.load(_vec_ptr(context, builder, sty, s, n1_)[0], align=al)
        c = builder.load(_vec_ptr(context, builder, sty, s, n2_)[0], align=al)
        out = builder.fadd(a, builder.fmul(_broadcast(builder, vty, h_), builder.fadd(b, c)))
        builder.store(out, dp, align=al)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def vgrad(typingctx, r, ri, t, wri, wsi, grad, gi, c):
    """The gradient of :func:`~._quadratic.gradient_range` for ``LANES`` pixels.

    With ``wr = t[wri:+LANES]`` (``W r``) and ``ws = t[wsi:+LANES]`` (``W s_k``)::

        grad[gi:+LANES] = (c * r[ri:+LANES]) * (wr - 2 ws)

    evaluated left to right as the scalar expression is; a streaming store where
    ``grad`` is aligned (:func:`_store_streaming`).
    """
    _check(r, t, grad)
    sig = types.void(r, types.int64, t, types.int64, types.int64, grad, types.int64, r.dtype)

    def codegen(context, builder, signature, args):
        ra, ri_, ta, wri_, wsi_, ga, gi_, c_ = args
        A = signature.args
        al = _align(A[0])
        rp, vty = _vec_ptr(context, builder, A[0], ra, ri_)
        rv = builder.load(rp, align=al)
        wr = builder.load(_vec_ptr(context, builder, A[2], ta, wri_)[0], align=al)
        ws = builder.load(_vec_ptr(context, builder, A[2], ta, wsi_)[0], align=al)
        gp, _ = _vec_ptr(context, builder, A[5], ga, gi_)
        two = _broadcast(builder, vty, ir.Constant(vty.element, 2.0))
        scaled = builder.fmul(_broadcast(builder, vty, c_), rv)
        g = builder.fmul(scaled, builder.fsub(wr, builder.fmul(two, ws)))
        _store_streaming(builder, g, gp, al)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def vgather(typingctx, acc, ai, src, co, rows, wts, i0, count):
    """``acc[ai:+LANES] = Σ_{m < count} wts[i0+m] * src[rows[i0+m] + co:+LANES]``, in registers.

    Summed left to right from ``m = 0`` (``w0 * v0``, then ``+ w1 * v1`` ...), with a
    separate multiply and add, as ``w0 * v0`` then :func:`vaxpy` would; but the
    running sum stays in a register instead of going through ``acc`` in memory
    after every term (each store-to-load round trip is a few cycles of latency on
    the slice's critical path). ``rows`` holds element offsets (int64), ``wts`` the
    weights in ``src``'s dtype; ``count >= 1``.
    """
    _check(acc, src)
    if not (isinstance(rows, types.Array) and rows.dtype == types.int64 and rows.ndim == 1):
        raise TypeError("vgather: rows must be a flat int64 array")
    _check(acc, wts)
    sig = types.void(acc, types.int64, src, types.int64, rows, wts, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        a, ai_, s, co_, rw, wt, i0_, cnt = args
        A = signature.args
        al = _align(A[0])
        rows_a = context.make_array(A[4])(context, builder, rw)
        wts_a = context.make_array(A[5])(context, builder, wt)

        def term(m):
            i = builder.add(i0_, m)
            off = builder.add(builder.load(builder.gep(rows_a.data, [i])), co_)
            w = builder.load(builder.gep(wts_a.data, [i]))
            sp, vty = _vec_ptr(context, builder, A[2], s, off)
            return builder.fmul(_broadcast(builder, vty, w), builder.load(sp, align=al))

        first = term(ir.Constant(i0_.type, 0))
        run = cgutils.alloca_once(builder, first.type)  # promoted to a register by LLVM
        builder.store(first, run)
        with cgutils.for_range(builder, builder.sub(cnt, ir.Constant(cnt.type, 1))) as loop:
            m = builder.add(loop.index, ir.Constant(cnt.type, 1))
            builder.store(builder.fadd(builder.load(run), term(m)), run)
        dp, _ = _vec_ptr(context, builder, A[0], a, ai_)
        builder.store(builder.load(run), dp, align=al)
        return context.get_dummy_value()

    return sig, codegen


def _transpose_masks(lanes: int) -> list[tuple[int, list[int], list[int]]]:
    """The shuffle masks of a ``lanes x lanes`` transpose in ``log2(lanes)`` stages.

    Stage ``s`` pairs vectors ``i`` and ``i | m`` (``m = 2**s``, bit ``s`` of ``i``
    clear) and swaps bit ``s`` of the vector index with bit ``s`` of the lane
    index; after every stage element ``(i, j)`` sits at ``(j, i)``.
    """
    stages = []
    m = 1
    while m < lanes:
        lo = [j if not j & m else lanes + (j & ~m) for j in range(lanes)]
        hi = [(j | m) if not j & m else lanes + j for j in range(lanes)]
        stages.append((m, lo, hi))
        m *= 2
    return stages


@intrinsic
def vtranspose(typingctx, dst, di, ds, src, si, ss):
    """Transpose a ``LANES x LANES`` block: ``dst[di + j*ds + i] = src[si + i*ss + j]``.

    ``LANES`` vector loads (rows ``si + i*ss``), ``log2(LANES)`` stages of
    shuffles, ``LANES`` vector stores (rows ``di + j*ds``): what turns a
    ``(C, pixels)`` block of the values into ``(pixels, C)`` lattice-row order and
    back, instead of one scalar load and store per element. Exact (moves bits).
    """
    _check(dst, src)
    sig = types.void(dst, types.int64, types.int64, src, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        d, di_, ds_, s, si_, ss_ = args
        A = signature.args
        al = _align(A[0])
        rows = []
        for i in range(LANES):
            off = builder.add(si_, builder.mul(ss_, ir.Constant(ss_.type, i)))
            rows.append(builder.load(_vec_ptr(context, builder, A[3], s, off)[0], align=al))
        mask = lambda m: ir.Constant(ir.VectorType(_I32, LANES), m)  # noqa: E731
        for m, lo, hi in _transpose_masks(LANES):
            out = list(rows)
            for i in range(LANES):
                if i & m:
                    continue
                a, b = rows[i], rows[i | m]
                out[i] = builder.shuffle_vector(a, b, mask(lo))
                out[i | m] = builder.shuffle_vector(a, b, mask(hi))
            rows = out
        for j in range(LANES):
            off = builder.add(di_, builder.mul(ds_, ir.Constant(ds_.type, j)))
            builder.store(rows[j], _vec_ptr(context, builder, A[0], d, off)[0], align=al)
        return context.get_dummy_value()

    return sig, codegen


def _store_streaming(builder, value, ptr, align):
    """Store a vector bypassing the cache (``!nontemporal``) where ``ptr`` is aligned to
    the vector's size, else an ordinary store; the same bits land either way.

    For large outputs written once (the loss's gradient, 5.5 MB per 256² image of 21
    classes): an ordinary store first reads the cache line it writes (read for
    ownership), one more pass over memory in a kernel that is bound by memory
    bandwidth. Streaming stores are weakly ordered: :func:`sfence` orders them before
    the results are handed on.
    """
    elt = value.type.element
    nbytes = value.type.count * (8 if isinstance(elt, ir.DoubleType) else 4)
    i64 = ir.IntType(64)
    addr = builder.ptrtoint(ptr, i64)
    low = builder.and_(addr, ir.Constant(i64, nbytes - 1))
    aligned = builder.icmp_unsigned("==", low, ir.Constant(i64, 0))
    with builder.if_else(aligned, likely=True) as (then, otherwise):
        with then:
            st = builder.store(value, ptr, align=nbytes)
            st.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(_I32, 1)]))
        with otherwise:
            builder.store(value, ptr, align=align)


@intrinsic
def sfence(typingctx):
    """A store fence (x86 ``sfence``): streaming stores before it are visible to every
    thread before any store after it. Nothing elsewhere."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        if platform.machine().lower() in ("x86_64", "amd64"):
            fnty = ir.FunctionType(ir.VoidType(), [])
            builder.call(builder.module.declare_intrinsic("llvm.x86.sse.sfence", fnty=fnty), [])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def vfold(typingctx, mn, mx, z, ai, src, si):
    """Fold ``x = src[si:+LANES]`` into running extremes and a NaN detector at ``ai``:
    ``mn = x < mn ? x : mn``, ``mx = x > mx ? x : mx``, ``z += x - x`` (NaN exactly when
    some ``x`` was NaN or infinite), element by element as the scalar code does."""
    _check(mn, mx, z, src)
    sig = types.void(mn, mx, z, types.int64, src, types.int64)

    def codegen(context, builder, signature, args):
        mn_, mx_, z_, ai_, s, si_ = args
        al = _align(signature.args[0])
        sty = signature.args[0]
        pmn, _ = _vec_ptr(context, builder, sty, mn_, ai_)
        pmx, _ = _vec_ptr(context, builder, sty, mx_, ai_)
        pz, _ = _vec_ptr(context, builder, sty, z_, ai_)
        x = builder.load(_vec_ptr(context, builder, sty, s, si_)[0], align=al)
        lo = builder.load(pmn, align=al)
        hi = builder.load(pmx, align=al)
        builder.store(builder.select(builder.fcmp_ordered("<", x, lo), x, lo), pmn, align=al)
        builder.store(builder.select(builder.fcmp_ordered(">", x, hi), x, hi), pmx, align=al)
        builder.store(builder.fadd(builder.load(pz, align=al), builder.fsub(x, x)), pz, align=al)
        return context.get_dummy_value()

    return sig, codegen
