"""Scribble annotations: ScribbleSup XML and text polylines, rasterised to label PNGs.

Two input formats are read:

* **ScribbleSup XML** (Lin et al., CVPR 2016)::

      <annotation>
        <filename>2007_000032.jpg</filename>
        <size><width>500</width><height>281</height></size>
        <polygon>
          <tag>aeroplane</tag>
          <point><X>104</X><Y>78</Y></point>
          <point><X>375</X><Y>183</Y></point>
        </polygon>
        ...
      </annotation>

  ``<imagesize><nrows>H</nrows><ncols>W</ncols></imagesize>`` (LabelMe style) is accepted
  in place of ``<size>``. The file is parsed with :mod:`defusedxml`, so files with entity
  declarations (the "billion laughs" expansion) or external references are rejected.

* **Text polylines**: one stroke per line, ``label,x1,y1,x2,y2,...`` where ``label`` is a
  class index or a tag name; blank lines and lines starting with ``#`` are skipped.

Coordinates are 0-based pixel coordinates (``x`` = column, ``y`` = row; integer values are
pixel centres). Each polyline is rasterised with a square brush of ``width`` pixels (3 by
default); strokes are drawn in file order (a later stroke overwrites an earlier one where
they cross); points outside the image are allowed and the stroke is clipped to the image.
Unlabelled pixels are :data:`rloss.constants.IGNORE_INDEX` (255).

Tags map to PASCAL VOC class indices through :data:`VOC_TAG_ALIASES`, which includes the
short names used by ScribbleSup (``plane``, ``bike``, ``table``, ``plant``, ``monitor``,
``tv``, ``motorcycle``, ``couch``...). ScribbleSup also labels the background with
PASCAL-Context names (``sky``, ``grass``, ``wall``...); those follow ``tag_policy``:
``"background"`` (class 0, the default), ``"ignore"`` (stroke dropped) or ``"error"``.
"""

from __future__ import annotations

import itertools
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rloss._io import InputTooLargeError, check_image_size, check_output_dir, resolve_path
from rloss.constants import IGNORE_INDEX, VOC_CLASSES
from rloss.data.io import (
    IMAGE_EXTENSIONS,
    DataError,
    find_image,
    read_image,
    read_label,
    write_label,
)

__all__ = [
    "SIZE_MISMATCH_POLICIES",
    "TAG_POLICIES",
    "VOC_TAG_ALIASES",
    "ConvertResult",
    "ConvertSummary",
    "ScribbleAnnotation",
    "ScribbleFormatError",
    "Stroke",
    "UnknownTagError",
    "convert_directory",
    "convert_file",
    "labelled_fraction",
    "normalize_tag",
    "parse_polyline_text",
    "parse_scribble_xml",
    "rasterize_strokes",
    "read_scribble_file",
    "scribble_id",
    "tag_to_class",
]

#: Policies for tags that are not one of the classes: map to background, drop, or fail.
TAG_POLICIES: tuple[str, ...] = ("background", "ignore", "error")
#: Policies when the XML ``<size>`` disagrees with the image: fail the file, or warn and use
#: the image size.
SIZE_MISMATCH_POLICIES: tuple[str, ...] = ("error", "warn")
#: Annotation file suffixes read by :func:`convert_directory`.
SCRIBBLE_SUFFIXES: tuple[str, ...] = (".xml", ".txt")
#: Lossy image formats: their compression noise turns into spurious classes in a label map.
LOSSY_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".jpe", ".jfif", ".webp")
#: Stem suffixes of public scribble files (``2007_000032_scribble.txt``), dropped to get the
#: image id.
_ID_SUFFIX = re.compile(r"[_\-.]scribbles?$", re.IGNORECASE)


def scribble_id(path: str | os.PathLike[str]) -> str:
    """The image id of a scribble file: its stem without a ``_scribble``/``_scribbles`` suffix.

    Public ScribbleSup text files are named ``<id>_scribble.txt`` next to ``<id>.jpg``; outputs
    are named ``<id>.png`` so that :class:`rloss.data.voc.VOCScribble` finds them.

    >>> scribble_id("ann/2007_000032_scribble.txt"), scribble_id("2007_000032.xml")
    ('2007_000032', '2007_000032')
    """
    stem = Path(path).stem
    return _ID_SUFFIX.sub("", stem) or stem

_ALIASES: dict[str, tuple[str, ...]] = {
    "background": ("bg", "bkg", "back", "__background__", "void_background"),
    "aeroplane": ("airplane", "plane", "aircraft", "aeroplanes"),
    "bicycle": ("bike", "cycle"),
    "bird": ("birds",),
    "boat": ("ship",),
    "bottle": ("bottles",),
    "bus": ("buses",),
    "car": ("cars", "automobile"),
    "cat": ("cats",),
    "chair": ("chairs",),
    "cow": ("cows",),
    "diningtable": ("table", "dining table", "dining_table", "dinning table"),
    "dog": ("dogs",),
    "horse": ("horses",),
    "motorbike": ("motorcycle", "motor bike", "motorbikes"),
    "person": ("people", "human", "persons"),
    "pottedplant": ("plant", "potted plant", "potted_plant", "pottedplants"),
    "sheep": (),
    "sofa": ("couch",),
    "train": ("trains",),
    "tvmonitor": ("tv", "monitor", "tv monitor", "tv/monitor", "tvmonitors", "television"),
}


def normalize_tag(tag: str) -> str:
    """Lower-case ``tag``, drop spaces, ``_``, ``-``, ``/``: ``"TV/Monitor"`` -> ``"tvmonitor"``."""
    return re.sub(r"[\s_\-/]+", "", tag.strip().lower())


#: Normalised tag -> VOC class index (official names, ScribbleSup short names, plurals).
VOC_TAG_ALIASES: dict[str, int] = {}
for _index, _name in enumerate(VOC_CLASSES):
    VOC_TAG_ALIASES[normalize_tag(_name)] = _index
    for _alias in _ALIASES[_name]:
        VOC_TAG_ALIASES[normalize_tag(_alias)] = _index
del _index, _name, _alias


class ScribbleFormatError(DataError):
    """A scribble file is malformed or unsafe (truncated XML, entity expansion, bad numbers)."""


class UnknownTagError(DataError):
    """A tag is not a known class and the tag policy is ``"error"``."""


@dataclass(frozen=True)
class Stroke:
    """One scribble polyline.

    Attributes:
        tag: class name or index as written in the file.
        points: ``float64`` array ``(K, 2)`` of ``(x, y)`` vertices, ``K >= 1``.
    """

    tag: str
    points: np.ndarray


@dataclass(frozen=True)
class ScribbleAnnotation:
    """The strokes of one image.

    Attributes:
        strokes: the polylines in file order.
        size: ``(H, W)`` from the file, or ``None`` when the file does not say.
        filename: image file name from the file (XML ``<filename>``), or ``None``.
        source: path of the file read, for messages.
    """

    strokes: list[Stroke]
    size: tuple[int, int] | None = None
    filename: str | None = None
    source: str = "<memory>"


def tag_to_class(
    tag: str,
    policy: str = "background",
    aliases: dict[str, int] | None = None,
    num_classes: int = len(VOC_CLASSES),
) -> int | None:
    """Class index of a scribble tag.

    Args:
        tag: class name (any alias of :data:`VOC_TAG_ALIASES`, case- and separator-insensitive)
            or a decimal class index.
        policy: what to do with an unknown name: ``"background"`` -> 0, ``"ignore"`` -> ``None``
            (drop the stroke), ``"error"`` -> raise :class:`UnknownTagError`.
        aliases: normalised name -> index table; defaults to :data:`VOC_TAG_ALIASES`.
        num_classes: numeric tags must lie in ``0..num_classes-1``.

    Returns:
        The class index, or ``None`` when the stroke is to be dropped.
    """
    if policy not in TAG_POLICIES:
        raise ValueError(f"policy: want one of {TAG_POLICIES}, got {policy!r}")
    text = tag.strip()
    if re.fullmatch(r"\d+", text):
        value = int(text)
        if value == IGNORE_INDEX:
            return None
        if value >= num_classes:
            raise UnknownTagError(f"class index {value} out of range 0..{num_classes - 1}")
        return value
    table = VOC_TAG_ALIASES if aliases is None else aliases
    key = normalize_tag(text)
    if key in table:
        return table[key]
    if policy == "background":
        return 0
    if policy == "ignore":
        return None
    raise UnknownTagError(f"unknown tag {tag!r} (tag policy 'error')")


def _child(elem, *names: str):
    wanted = {n.lower() for n in names}
    for c in elem:
        if isinstance(c.tag, str) and c.tag.lower() in wanted:
            return c
    return None


def _number(elem, what: str, source: str) -> float:
    text = (elem.text or "").strip() if elem is not None else ""
    try:
        value = float(text)
    except ValueError:
        raise ScribbleFormatError(f"{source}: {what} is not a number: {text!r}") from None
    if not np.isfinite(value):
        raise ScribbleFormatError(f"{source}: {what} is not finite: {text!r}")
    return value


def parse_scribble_xml(source: str | os.PathLike[str] | bytes) -> ScribbleAnnotation:
    """Parse a ScribbleSup XML file (untrusted input; parsed with :mod:`defusedxml`).

    Args:
        source: file path, or the XML document as ``bytes``.

    Returns:
        The annotation; polygons without points are skipped.

    Raises:
        ScribbleFormatError: missing/unreadable file, malformed or truncated XML, forbidden
            DTD entities, a polygon without ``<tag>``, a non-numeric coordinate.
    """
    from xml.etree.ElementTree import ParseError

    import defusedxml
    import defusedxml.ElementTree as DET

    if isinstance(source, bytes):
        data, name = source, "<bytes>"
    else:
        name = str(source)
        try:
            data = Path(source).read_bytes()
        except FileNotFoundError:
            raise ScribbleFormatError(f"{name}: file not found") from None
        except OSError as err:
            raise ScribbleFormatError(f"{name}: cannot read ({err})") from err
    try:
        root = DET.fromstring(data)
    except defusedxml.DefusedXmlException as err:
        raise ScribbleFormatError(f"{name}: unsafe XML rejected ({err})") from err
    except ParseError as err:
        raise ScribbleFormatError(f"{name}: malformed XML ({err})") from err

    size = None
    size_elem = _child(root, "size", "imagesize")
    if size_elem is not None:
        w_elem = _child(size_elem, "width", "ncols")
        h_elem = _child(size_elem, "height", "nrows")
        if w_elem is not None and h_elem is not None:
            w = _number(w_elem, "<size> width", name)
            h = _number(h_elem, "<size> height", name)
            if w < 1 or h < 1 or w != int(w) or h != int(h):
                raise ScribbleFormatError(f"{name}: invalid <size> {w}x{h}")
            try:
                size = check_image_size(int(w), int(h), f"{name}: <size>")
            except InputTooLargeError as err:
                raise ScribbleFormatError(str(err)) from None
    fn_elem = _child(root, "filename")
    filename = None
    if fn_elem is not None:
        filename = (fn_elem.text or "").strip() or None

    strokes = []
    for i, poly in enumerate(e for e in root.iter() if isinstance(e.tag, str)
                             and e.tag.lower() == "polygon"):
        tag_elem = _child(poly, "tag", "name", "label")
        if tag_elem is None or not (tag_elem.text or "").strip():
            raise ScribbleFormatError(f"{name}: polygon #{i} has no <tag>")
        pts = []
        for pt in poly:
            if not (isinstance(pt.tag, str) and pt.tag.lower() == "point"):
                continue
            x = _number(_child(pt, "x"), f"polygon #{i} point X", name)
            y = _number(_child(pt, "y"), f"polygon #{i} point Y", name)
            pts.append((x, y))
        if pts:
            strokes.append(Stroke(tag_elem.text.strip(), np.asarray(pts, dtype=np.float64)))
    return ScribbleAnnotation(strokes=strokes, size=size, filename=filename, source=name)


def parse_polyline_text(
    source: str | os.PathLike[str], text: str | None = None
) -> ScribbleAnnotation:
    """Parse the text polyline format: one stroke per line, ``label,x1,y1,x2,y2,...``.

    Files are read as UTF-8; a byte-order mark (as some Windows editors write) is skipped.

    Args:
        source: file path (read when ``text`` is ``None``; otherwise used in messages).
        text: the file content, if already in memory.

    Raises:
        ScribbleFormatError: unreadable file, a line with an odd number of coordinates or a
            non-numeric coordinate (the message gives the line number).
    """
    name = str(source)
    if text is None:
        try:
            text = Path(source).read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise ScribbleFormatError(f"{name}: file not found") from None
        except (OSError, UnicodeDecodeError) as err:
            raise ScribbleFormatError(f"{name}: cannot read ({err})") from err
    strokes = []
    text = text.removeprefix("\ufeff")
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split(",")]
        label, coords = parts[0], parts[1:]
        if not label:
            raise ScribbleFormatError(f"{name}:{lineno}: empty label")
        if not coords or len(coords) % 2:
            raise ScribbleFormatError(
                f"{name}:{lineno}: want 'label,x1,y1,x2,y2,...' with an even, non-zero number "
                f"of coordinates, got {len(coords)}"
            )
        try:
            values = np.asarray([float(c) for c in coords], dtype=np.float64)
        except ValueError:
            raise ScribbleFormatError(f"{name}:{lineno}: non-numeric coordinate") from None
        if not np.all(np.isfinite(values)):
            raise ScribbleFormatError(f"{name}:{lineno}: non-finite coordinate")
        strokes.append(Stroke(label, values.reshape(-1, 2)))
    return ScribbleAnnotation(strokes=strokes, size=None, filename=None, source=name)


def read_scribble_file(path: str | os.PathLike[str]) -> ScribbleAnnotation:
    """Read a ``.xml`` (ScribbleSup) or ``.txt`` (text polylines) scribble file."""
    path = Path(path)
    if path.suffix.lower() == ".xml":
        return parse_scribble_xml(path)
    if path.suffix.lower() == ".txt":
        return parse_polyline_text(path)
    raise ValueError(f"path: want a .xml or .txt scribble file, got {path}")


def _clip_segment(p0: np.ndarray, p1: np.ndarray, lo: float, hx: float, hy: float):
    """Liang–Barsky: clip segment p0-p1 to [lo, hx] x [lo, hy]; None when outside."""
    d = p1 - p0
    t0, t1 = 0.0, 1.0
    for p, q in (
        (-d[0], p0[0] - lo),
        (d[0], hx - p0[0]),
        (-d[1], p0[1] - lo),
        (d[1], hy - p0[1]),
    ):
        if p == 0:
            if q < 0:
                return None
            continue
        t = q / p
        if p < 0:
            t0 = max(t0, t)
        else:
            t1 = min(t1, t)
        if t0 > t1:
            return None
    return p0 + t0 * d, p0 + t1 * d


def _polyline_pixels(points: np.ndarray, height: int, width: int, margin: int) -> np.ndarray:
    """Integer ``(M, 2)`` (row, col) centre-line pixels of a polyline, clipped near the image."""
    lo = -float(margin) - 1.0
    hx, hy = width - 1 + margin + 1.0, height - 1 + margin + 1.0
    if len(points) == 1:
        segs = [(points[0], points[0])]
    else:
        segs = list(itertools.pairwise(points))
    out = []
    for a, b in segs:
        clipped = _clip_segment(a, b, lo, hx, hy)
        if clipped is None:
            continue
        a, b = clipped
        n = int(np.ceil(np.max(np.abs(b - a)))) + 1
        t = np.linspace(0.0, 1.0, n)[:, None]
        xy = np.floor(a + t * (b - a) + 0.5).astype(np.int64)
        out.append(xy[:, ::-1])
    if not out:
        return np.zeros((0, 2), dtype=np.int64)
    return np.concatenate(out)


def rasterize_strokes(
    strokes: Iterable[tuple[int, np.ndarray]],
    size: tuple[int, int],
    width: int = 3,
    ignore_index: int = IGNORE_INDEX,
) -> np.ndarray:
    """Draw labelled polylines into a label map.

    Args:
        strokes: ``(class_index, points)`` pairs, ``points`` a ``(K, 2)`` array of ``(x, y)``
            coordinates (any real values; the part outside the image is clipped).
        size: ``(H, W)`` of the output.
        width: brush width in pixels (a ``width`` x ``width`` square around each centre-line
            pixel), >= 1.
        ignore_index: value of pixels no stroke touches.

    Returns:
        ``uint8`` array ``(H, W)``: class index on stroke pixels, ``ignore_index`` elsewhere.
    """
    height, width_px = int(size[0]), int(size[1])
    if height < 1 or width_px < 1:
        raise ValueError(f"size: want (H, W) with H, W >= 1, got {size}")
    check_image_size(width_px, height, "rasterize_strokes: size")
    if width < 1:
        raise ValueError(f"width: want >= 1, got {width}")
    out = np.full((height, width_px), ignore_index, dtype=np.uint8)
    offsets = np.arange(-(width // 2), (width - 1) // 2 + 1)
    for label, points in strokes:
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        if pts.size == 0:
            continue
        if not 0 <= int(label) <= 255:
            raise ValueError(f"strokes: class index must lie in 0..255, got {label}")
        centre = _polyline_pixels(pts, height, width_px, margin=len(offsets))
        if centre.size == 0:
            continue
        rr = (centre[:, 0, None, None] + offsets[:, None]).reshape(len(centre), -1)
        cc = (centre[:, 1, None, None] + offsets[None, :]).reshape(len(centre), -1)
        rr, cc = np.broadcast_arrays(rr[:, :, None], cc[:, None, :])
        rr, cc = rr.ravel(), cc.ravel()
        keep = (rr >= 0) & (rr < height) & (cc >= 0) & (cc < width_px)
        out[rr[keep], cc[keep]] = label
    return out


def labelled_fraction(label: np.ndarray, ignore_index: int = IGNORE_INDEX) -> float:
    """Fraction of pixels of ``label`` that are not ``ignore_index`` (0.0 for an empty map)."""
    label = np.asarray(label)
    return float(np.count_nonzero(label != ignore_index)) / max(label.size, 1)


# --------------------------------------------------------------------------- conversion


@dataclass
class ConvertResult:
    """Outcome of converting one scribble file.

    Attributes:
        source: the scribble file.
        output: the PNG written (or that would have been written).
        status: ``"converted"``, ``"skipped"`` (output existed) or ``"failed"``.
        labelled_fraction: fraction of labelled pixels of the output, ``None`` on failure.
        message: error for failures, warning (e.g. size mismatch) otherwise, or ``None``.
        unknown_tags: unknown tag names met (mapped by the tag policy) with their counts.
    """

    source: str
    output: str
    status: str
    labelled_fraction: float | None = None
    message: str | None = None
    unknown_tags: dict[str, int] = field(default_factory=dict)


@dataclass
class ConvertSummary:
    """All results of :func:`convert_directory`."""

    results: list[ConvertResult]
    tag_policy: str = "background"

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def failed(self) -> list[ConvertResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def ok(self) -> bool:
        """True when no file failed."""
        return not self.failed

    @property
    def mean_labelled_fraction(self) -> float | None:
        fr = [r.labelled_fraction for r in self.results if r.labelled_fraction is not None]
        return float(np.mean(fr)) if fr else None

    def format(self) -> str:
        """A human-readable multi-line summary (failures and warnings name their files)."""
        lines = []
        for r in self.results:
            if r.status == "failed":
                lines.append(f"FAILED  {r.message}")
            elif r.message:
                lines.append(f"warning {r.message}")
        unknown: Counter[str] = Counter()
        for r in self.results:
            unknown.update(r.unknown_tags)
        if unknown:
            action = {"background": "mapped to background", "ignore": "dropped",
                      "error": "rejected"}[self.tag_policy]
            top = ", ".join(f"{t} x{n}" for t, n in unknown.most_common(12))
            more = f" and {len(unknown) - 12} more" if len(unknown) > 12 else ""
            lines.append(f"tags outside the classes ({action}): {top}{more}")
        frac = self.mean_labelled_fraction
        lines.append(
            f"{len(self.results)} files: {self.count('converted')} converted, "
            f"{self.count('skipped')} skipped (output exists), {self.count('failed')} failed; "
            + (f"mean labelled-pixel fraction {100 * frac:.2f}%" if frac is not None else
               "no labelled pixels measured")
        )
        return "\n".join(lines)


def _image_size(image_path: Path) -> tuple[int, int]:
    return read_image(image_path).shape[:2]


def convert_file(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    image: str | os.PathLike[str] | None = None,
    images_dir: str | os.PathLike[str] | None = None,
    tag_policy: str = "background",
    size_mismatch: str = "error",
    overwrite: bool = False,
    width: int = 3,
) -> ConvertResult:
    """Convert one scribble file (``.xml`` or ``.txt``) to a label PNG; never raises on bad data.

    The image size comes from the image (``image``, or ``images_dir/<stem>.<ext>``, or the XML
    ``<filename>`` in ``images_dir``), which is fully decoded so that corrupt images are
    reported; without images it comes from the XML ``<size>``.

    Args:
        source: scribble file.
        output: destination PNG (written atomically, VOC palette, 255 = unlabelled).
        image: the image file, if known.
        images_dir: folder searched for the image when ``image`` is ``None``.
        tag_policy: one of :data:`TAG_POLICIES`.
        size_mismatch: one of :data:`SIZE_MISMATCH_POLICIES` (``"warn"`` uses the image size).
        overwrite: rewrite an existing ``output`` (otherwise it is skipped); an output that is
            the scribble file or the image fails, whatever ``overwrite``.
        width: brush width in pixels.

    Returns:
        A :class:`ConvertResult`; failures carry a message naming the file.
    """
    if tag_policy not in TAG_POLICIES:
        raise ValueError(f"tag_policy: want one of {TAG_POLICIES}, got {tag_policy!r}")
    if size_mismatch not in SIZE_MISMATCH_POLICIES:
        raise ValueError(
            f"size_mismatch: want one of {SIZE_MISMATCH_POLICIES}, got {size_mismatch!r}"
        )
    source, output = Path(source), Path(output)
    result = ConvertResult(source=str(source), output=str(output), status="failed")
    for inp in (source, image):
        if inp is not None and resolve_path(output) == resolve_path(inp):
            result.message = f"{output}: is the input {inp}; refusing to overwrite an input"
            return result
    if output.exists() and not overwrite:
        result.status = "skipped"
        try:
            result.labelled_fraction = labelled_fraction(read_label(output))
        except DataError as err:
            result.status = "failed"
            result.message = f"{output}: existing output is unreadable ({err}); use --overwrite"
        return result
    try:
        ann = read_scribble_file(source)
        image_path = Path(image) if image is not None else None
        if image_path is None and images_dir is not None:
            image_id = scribble_id(source)
            image_path = find_image(images_dir, image_id)
            if image_path is None and image_id != source.stem:
                image_path = find_image(images_dir, source.stem)
            if image_path is None and ann.filename:
                candidate = Path(images_dir) / Path(ann.filename).name
                image_path = candidate if candidate.is_file() else None
            if image_path is None:
                raise DataError(f"{source}: no image {image_id}.* in {images_dir}")
        warning = None
        if image_path is not None:
            size = _image_size(image_path)
            if ann.size is not None and tuple(ann.size) != tuple(size):
                msg = (f"{source}: <size> says {ann.size[1]}x{ann.size[0]} (WxH) but image "
                       f"{image_path} is {size[1]}x{size[0]}")
                if size_mismatch == "error":
                    raise DataError(msg + " (use --size-mismatch warn to trust the image)")
                warning = msg + "; used the image size"
        elif ann.size is not None:
            size = ann.size
        else:
            raise DataError(f"{source}: the file gives no image size; pass the images folder")

        resolved, unknown = [], Counter()
        for stroke in ann.strokes:
            known = stroke.tag.strip().isdigit() or normalize_tag(stroke.tag) in VOC_TAG_ALIASES
            try:
                cls = tag_to_class(stroke.tag, tag_policy)
            except UnknownTagError as err:
                raise UnknownTagError(f"{source}: {err}") from None
            if not known:
                unknown[stroke.tag.strip()] += 1
            if cls is not None:
                resolved.append((cls, stroke.points))
        label = rasterize_strokes(resolved, size, width=width)
        write_label(output, label)
        result.status = "converted"
        result.labelled_fraction = labelled_fraction(label)
        result.message = warning
        result.unknown_tags = dict(unknown)
    except DataError as err:
        msg = str(err)
        result.message = msg if str(source) in msg or (image and str(image) in msg) else (
            f"{source}: {msg}")
    return result


def _convert_task(task: tuple) -> ConvertResult:
    source, output, images_dir, kwargs = task
    try:
        return convert_file(source, output, images_dir=images_dir, **kwargs)
    except Exception as err:  # a worker must report, never take the batch down
        return ConvertResult(str(source), str(output), "failed",
                             message=f"{source}: unexpected error: {type(err).__name__}: {err}")


def convert_directory(
    source_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    images_dir: str | os.PathLike[str] | None = None,
    tag_policy: str = "background",
    size_mismatch: str = "error",
    overwrite: bool = False,
    workers: int | None = None,
    width: int = 3,
    progress: bool = True,
    files: Sequence[str | os.PathLike[str]] | None = None,
) -> ConvertSummary:
    """Convert every ``*.xml`` / ``*.txt`` scribble file of a folder to ``out_dir/<id>.png``.

    The id is the file's stem without a ``_scribble``/``_scribbles`` suffix
    (:func:`scribble_id`): ``2007_000032_scribble.txt`` -> ``2007_000032.png``, the name
    :class:`rloss.data.voc.VOCScribble` reads. Bad files are reported in the summary and do not
    stop the batch. Running twice gives the same files (existing outputs are skipped unless
    ``overwrite``). The output folder is checked first (:func:`rloss._io.check_output_dir`):
    it may not be the scribble or image folder, and no output may replace an input.

    Args:
        source_dir: folder of scribble files (not recursive).
        out_dir: output folder (created).
        images_dir: image folder (sizes come from the images); ``None`` trusts XML ``<size>``.
        tag_policy: one of :data:`TAG_POLICIES`.
        size_mismatch: one of :data:`SIZE_MISMATCH_POLICIES`.
        overwrite: rewrite existing outputs.
        workers: worker processes; ``None`` = ``min(8, cpu count)``; ``<= 1`` runs in-process.
        width: brush width in pixels.
        progress: show a tqdm progress bar.
        files: convert these files instead of listing ``source_dir``.

    Returns:
        A :class:`ConvertSummary` (``summary.ok`` is False when any file failed).

    Raises:
        DataError: a folder is missing.
        rloss._io.UnsafeOutputError: ``out_dir`` is an input folder, a file, not writable, or
            an output would replace an input.
    """
    if tag_policy not in TAG_POLICIES:
        raise ValueError(f"tag_policy: want one of {TAG_POLICIES}, got {tag_policy!r}")
    if size_mismatch not in SIZE_MISMATCH_POLICIES:
        raise ValueError(
            f"size_mismatch: want one of {SIZE_MISMATCH_POLICIES}, got {size_mismatch!r}"
        )
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    if files is None:
        if not source_dir.is_dir():
            raise DataError(f"{source_dir}: scribble folder not found")
        files = sorted(p for p in source_dir.iterdir()
                       if p.is_file() and p.suffix.lower() in SCRIBBLE_SUFFIXES)
    files = [Path(f) for f in files]
    if images_dir is not None and not Path(images_dir).is_dir():
        raise DataError(f"{images_dir}: image folder not found")
    image_files = [] if images_dir is None else [
        p for p in Path(images_dir).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS]
    outputs = [out_dir / f"{scribble_id(f)}.png" for f in files]
    check_output_dir(out_dir, inputs=[source_dir, images_dir, *files, *image_files],
                     outputs=outputs, overwrite=overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = Counter(scribble_id(f) for f in files)
    kwargs = {"tag_policy": tag_policy, "size_mismatch": size_mismatch, "overwrite": overwrite,
              "width": width}
    tasks, results = [], []
    for f, out in zip(files, outputs, strict=True):
        if ids[scribble_id(f)] > 1:
            results.append(ConvertResult(str(f), str(out), "failed",
                                         message=f"{f}: several scribble files share the id "
                                         f"{scribble_id(f)!r}"))
        else:
            tasks.append((f, out, images_dir, kwargs))

    from rloss.data._parallel import map_files

    results += map_files(
        _convert_task, tasks, workers=workers, desc="scribbles", progress=progress
    )
    results.sort(key=lambda r: r.source)
    return ConvertSummary(results=results, tag_policy=tag_policy)
