"""What both lattice backends share: elevation maths, build options, the capacity hint.

* :func:`elevation_scales`: the per-coordinate scales of the elevation onto
  the permutohedral hyperplane, ``scale_i = sqrt(2/3) (d+1) / sqrt((i+1)(i+2))``,
  computed in double and rounded to float32 as the reference does.
* :class:`BuildOptions`: the choices a caller (or a test) may make about *how*
  a lattice is built, never about what it computes: every option gives
  bitwise the same filter output.
* :class:`CapacityHint`: how large the numba backend's first hash tables are.
  A build records the vertex count it needed, and the next build starts its
  tables at that size so that they rarely grow. This is the only state carried
  from one build to the next, it only affects speed and memory, and it is an
  explicit object: :data:`DEFAULT_CAPACITY_HINT` unless the options name another.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["DEFAULT_CAPACITY_HINT", "KEY_STRATEGIES", "BuildOptions", "CapacityHint",
           "elevation_scales"]  # fmt: skip

#: Valid ``BuildOptions.keys``.
KEY_STRATEGIES: tuple[str, ...] = ("auto", "packed", "full")


def elevation_scales(d: int) -> list[float]:
    """``d`` elevation scales in double precision (the backends cast them to float32)."""
    inv_std = math.sqrt(2.0 / 3.0) * (d + 1)
    return [inv_std / math.sqrt((i + 1) * (i + 2)) for i in range(d)]


class CapacityHint:
    """Most vertices one numba build task needed lately: sizes the next build's tables.

    Results never depend on it (vertex ids are given in insertion order, not by
    table slot); a good hint avoids rehashing and oversized scratch rows.

    Args:
        per_task: the starting hint (vertices per task).

    Example:
        >>> from rloss.lattice import CapacityHint
        >>> hint = CapacityHint()
        >>> hint.update(5000)
        >>> hint.per_task
        5000
        >>> hint.reset()
        >>> hint.per_task
        1024
    """

    #: The hint of a fresh object (a quarter of the smallest table).
    INITIAL: int = 1024

    def __init__(self, per_task: int = INITIAL) -> None:
        self.per_task = max(int(per_task), 1)

    def update(self, vertices: int) -> None:
        """Record the largest task-local vertex count of the build that just ran."""
        self.per_task = max(int(vertices), 1)

    def reset(self) -> None:
        """Back to the initial hint."""
        self.per_task = self.INITIAL

    def __repr__(self) -> str:
        return f"CapacityHint(per_task={self.per_task})"


#: The hint shared by every lattice whose options do not name their own.
DEFAULT_CAPACITY_HINT = CapacityHint()


@dataclass(frozen=True)
class BuildOptions:
    """How a lattice is built; every choice gives bitwise identical results.

    Args:
        keys: vertex key strategy. ``"auto"``: pack each key into one int64
            when the coordinate ranges fit (the fast path), else full keys.
            ``"full"``: always full keys (d int32 coordinates per vertex).
            ``"packed"``: packed keys or a ``ValueError`` when they do not fit.
        serial_below: numba: batches with fewer pixels than this run on one
            thread (waking the pool costs several ms per parallel region on a
            busy machine). 0: always use every thread.
        fused: numba: the first :meth:`~rloss.lattice.Lattice.quadratic_form`
            on a lattice runs build-to-slice image by image (8 or more images:
            one task per image; fewer: in phases over the batch lattice's pixel
            blocks, so that every thread works on every image), never forming
            the batch lattice (faster, less memory; bitwise the batch lattice's
            result). ``False``: always build the batch lattice.
        min_table: numba: smallest hash table (slots, a power of two).
        capacity: numba: the :class:`CapacityHint` to read and update;
            ``None`` means :data:`DEFAULT_CAPACITY_HINT`.

    Example:
        >>> import torch
        >>> from rloss.lattice import BuildOptions, Lattice
        >>> feats = torch.rand(1, 5, 8, 8) * 4
        >>> a = Lattice(feats, backend="numba").filter(torch.ones(1, 1, 8, 8))
        >>> full = BuildOptions(keys="full", serial_below=0)
        >>> b = Lattice(feats, backend="numba", options=full).filter(torch.ones(1, 1, 8, 8))
        >>> torch.equal(a, b)
        True
    """

    keys: str = "auto"
    serial_below: int = 32768
    fused: bool = True
    min_table: int = 4096
    capacity: CapacityHint | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.keys not in KEY_STRATEGIES:
            raise ValueError(f"keys must be one of {KEY_STRATEGIES}, got {self.keys!r}")
        if int(self.serial_below) < 0:
            raise ValueError(f"serial_below must be >= 0, got {self.serial_below}")
        t = int(self.min_table)
        if t < 4 or t & (t - 1):
            raise ValueError(f"min_table must be a power of two >= 4, got {self.min_table}")

    @property
    def hint(self) -> CapacityHint:
        """The capacity hint in use (:data:`DEFAULT_CAPACITY_HINT` unless given)."""
        return DEFAULT_CAPACITY_HINT if self.capacity is None else self.capacity


#: The options of a ``Lattice`` built without ``options=``.
DEFAULT_OPTIONS = BuildOptions()
