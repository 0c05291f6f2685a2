"""Open-addressing hash tables of lattice vertices: hashing, probe, rehash, written once.

Two table layouts, one per key strategy (see the package docstring):

* **full keys**: a slot holds ``_tag(hash) | id`` (one int64; -1 = empty). The
  tag (31 high bits of the hash) is compared first, so a probe usually reads
  one cache line; a candidate is accepted only after comparing the whole key,
  ``keys[row(id)]``, with the probed one. ``row(id)`` is ``rbase + id`` or,
  when a ``rows`` array is given, ``rows[rbase + id]`` (numba compiles the two
  variants separately; ``rows is None`` is resolved at compile time).
* **packed keys**: a key fits one non-negative int64; slot ``s`` is the pair
  ``table[base + 2s]`` (key, -1 = empty) and ``table[base + 2s + 1]`` (id), so
  a probe is one load and one compare.

Both use linear probing over a power-of-two number of slots (``mask`` =
slots - 1). Ids are given in insertion order by the callers, so the table
size never changes a result.
"""

from __future__ import annotations

import numpy as np
from numba import njit

#: Low 32 bits of a full-key table entry: the id (see ``tag``).
ID_MASK = np.int64(0xFFFFFFFF)
#: Multiplier of the polynomial part of the vertex hash (see ``raw_hash``).
MUL = 2654435761


@njit(cache=True)
def raw_hash(key, d):
    """Polynomial part of the vertex hash, ``sum_i key[i] * MUL^(d-1-i)`` (mod 2^64).

    Linear in the key: the hash of a neighbouring vertex (key + a fixed step) is
    ``mix(raw + raw(step))``, one addition (see ``hash_steps``).
    """
    h = np.int64(0)
    for i in range(d):
        h = h * np.int64(MUL) + np.int64(key[i])
    return h


@njit(cache=True)
def mix(h):
    """Finalizer of the vertex hash."""
    h ^= h >> 29
    h *= np.int64(0x5851F42D4C957F2D)
    h ^= h >> 32
    return h


@njit(cache=True)
def hash_steps(d):
    """``pw[i] = MUL^(d-1-i)`` (``pw[d] = 0``, the implicit coordinate) and
    ``ones = sum_i pw[i]``: the raw hash of the step ``(1, ..., 1) - (d+1) e_j`` is
    ``ones - (d+1) pw[j]``."""
    pw = np.zeros(d + 1, np.int64)
    p = np.int64(1)
    for i in range(d - 1, -1, -1):
        pw[i] = p
        p = p * np.int64(MUL)
    ones = np.int64(0)
    for i in range(d):
        ones += pw[i]
    return pw, ones


@njit(cache=True)
def simplex_hash(a, b, d):
    """Hash of the simplex key (``a[:d]`` remainder-0 point, ``b[:d]`` ranks)."""
    h = np.int64(0)
    for i in range(d):
        h = h * np.int64(2654435761) + np.int64(a[i])
        h = h * np.int64(40503) + np.int64(b[i])
    return mix(h)


@njit(cache=True)
def tag(h):
    """Full-key slot entry = ``tag(hash) | id``: the hash's high bits, checked before
    the full key (one cache line per probe); -1 = empty (tags are non-negative)."""
    return ((h >> 33) & np.int64(0x7FFFFFFF)) << 32


@njit(cache=True)
def full_probe(table, base, mask, h, keys, rows, rbase, key, w):
    """Look ``key`` (``w`` int32 values, hash ``h``) up in the full-key table at ``base``.

    Returns ``(id, slot)``: the id of the equal key and its slot, or ``-1`` and the
    empty slot where the key goes (the caller inserts with
    ``table[base + slot] = tag(h) | id`` after storing the key).
    """
    slot = h & mask
    t = tag(h)
    while True:
        ent = table[base + slot]
        if ent < 0:
            return -1, slot
        if (ent & ~ID_MASK) == t:
            i = ent & ID_MASK
            if rows is None:
                row = rbase + i
            else:
                row = rows[rbase + i]
            same = True
            for c in range(w):
                if keys[row, c] != key[c]:
                    same = False
                    break
            if same:
                return i, slot
        slot = (slot + 1) & mask


@njit(cache=True)
def full_rehash(cap, hashes, count):
    """A fresh full-key table of ``cap`` slots holding ids ``0 .. count`` (``hashes[id]``)."""
    mask = cap - 1
    table = np.full(cap, -1, np.int64)
    for q in range(count):
        slot = hashes[q] & mask
        while table[slot] >= 0:
            slot = (slot + 1) & mask
        table[slot] = tag(hashes[q]) | q
    return table


@njit(cache=True)
def packed_hash(pk):
    """Hash of a packed key: bits 32.. of ``pk * odd constant``."""
    return (pk * np.int64(-7046029254386353131)) >> 32


@njit(cache=True)
def packed_probe(table, base, mask, pk):
    """Look packed key ``pk`` up in the (key, id) table at ``base``.

    Returns ``(id, slot)``, or ``-1`` and the empty slot where it goes (insert
    with :func:`packed_insert`).
    """
    slot = packed_hash(pk) & mask
    while True:
        k0 = table[base + 2 * slot]
        if k0 == pk:
            return table[base + 2 * slot + 1], slot
        if k0 < 0:
            return -1, slot
        slot = (slot + 1) & mask


@njit(cache=True)
def packed_insert(table, base, slot, pk, i):
    """Store ``(pk, i)`` in the empty ``slot`` found by :func:`packed_probe`."""
    table[base + 2 * slot] = pk
    table[base + 2 * slot + 1] = i


@njit(cache=True)
def packed_rehash(cap, keys, count):
    """A fresh (key, id) table of ``cap`` slots holding ids ``0 .. count`` (``keys[id]``)."""
    mask = cap - 1
    table = np.full(2 * cap, -1, np.int64)
    for q in range(count):
        a = keys[q]
        slot = packed_hash(a) & mask
        while table[2 * slot] >= 0:
            slot = (slot + 1) & mask
        packed_insert(table, 0, slot, a, q)
    return table
