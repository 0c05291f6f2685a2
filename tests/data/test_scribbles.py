"""ScribbleSup XML / text parsing, rasterisation and the batch converter."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rloss.cli import main as cli_main
from rloss.data.io import read_label
from rloss.data.scribbles import (
    ScribbleFormatError,
    UnknownTagError,
    convert_directory,
    convert_file,
    parse_polyline_text,
    parse_scribble_xml,
    rasterize_strokes,
    tag_to_class,
)


def xml_doc(polygons, size=None, filename=None) -> str:
    parts = ["<annotation>"]
    if filename:
        parts.append(f"<filename>{filename}</filename>")
    if size:
        parts.append(f"<size><width>{size[1]}</width><height>{size[0]}</height></size>")
    for tag, pts in polygons:
        pp = "".join(f"<point><X>{x}</X><Y>{y}</Y></point>" for x, y in pts)
        parts.append(f"<polygon><tag>{tag}</tag>{pp}</polygon>")
    parts.append("</annotation>")
    return "\n".join(parts)


def write_jpeg(path: Path, h: int, w: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path, quality=90)


def seg_distance(px: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Distance of points px (M, 2) (x, y) to the polyline pts (K, 2)."""
    best = np.full(len(px), np.inf)
    segs = list(itertools.pairwise(pts)) if len(pts) > 1 else [(pts[0], pts[0])]
    for a, b in segs:
        d = b - a
        den = float(d @ d)
        t = np.zeros(len(px)) if den == 0 else np.clip(((px - a) @ d) / den, 0, 1)
        proj = a + t[:, None] * d
        best = np.minimum(best, np.linalg.norm(px - proj, axis=1))
    return best


@pytest.mark.parametrize(
    ("tag", "want"),
    [
        ("background", 0), ("plane", 1), ("Aeroplane", 1), ("bike", 2), ("bicycle", 2),
        ("table", 11), ("dining table", 11), ("diningtable", 11), ("plant", 16),
        ("potted_plant", 16), ("monitor", 20), ("tv", 20), ("TV/Monitor", 20),
        ("tvmonitor", 20), ("motorcycle", 14), ("motorbike", 14), ("sofa", 18),
        ("couch", 18), ("person", 15), ("people", 15), ("7", 7), ("0", 0),
    ],
)
def test_tag_to_class_known(tag, want):
    assert tag_to_class(tag, "error") == want


@pytest.mark.parametrize(("policy", "want"), [("background", 0), ("ignore", None)])
def test_tag_policy(policy, want):
    assert tag_to_class("sky", policy) == want


def test_tag_policy_error_and_bad_policy():
    with pytest.raises(UnknownTagError, match="sky"):
        tag_to_class("sky", "error")
    with pytest.raises(ValueError, match="policy"):
        tag_to_class("cat", "drop")
    with pytest.raises(UnknownTagError, match="out of range"):
        tag_to_class("21", "background")
    assert tag_to_class("255", "background") is None


def test_parse_xml_fields():
    ann = parse_scribble_xml(xml_doc([("cat", [(1, 2), (3.5, 4)]), ("sky", [(0, 0)])],
                                     size=(20, 30), filename="a.jpg").encode())
    assert ann.size == (20, 30)
    assert ann.filename == "a.jpg"
    assert [s.tag for s in ann.strokes] == ["cat", "sky"]
    np.testing.assert_array_equal(ann.strokes[0].points, [[1, 2], [3.5, 4]])


def test_parse_xml_labelme_imagesize():
    doc = ("<annotation><imagesize><nrows>7</nrows><ncols>9</ncols></imagesize>"
           "<polygon><tag>dog</tag><point><x>1</x><y>1</y></point></polygon></annotation>")
    assert parse_scribble_xml(doc.encode()).size == (7, 9)


def test_xml_entity_expansion_rejected(tmp_path):
    bomb = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
            '<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>'
            "<annotation><polygon><tag>&lol2;</tag></polygon></annotation>")
    path = tmp_path / "bomb.xml"
    path.write_text(bomb)
    with pytest.raises(ScribbleFormatError, match=r"bomb\.xml.*unsafe"):
        parse_scribble_xml(path)


def test_xml_truncated_and_bad_numbers(tmp_path):
    path = tmp_path / "trunc.xml"
    path.write_text(xml_doc([("cat", [(1, 2), (3, 4)])])[:-30])
    with pytest.raises(ScribbleFormatError, match=r"trunc\.xml.*malformed"):
        parse_scribble_xml(path)
    bad = xml_doc([("cat", [("abc", 2)])]).encode()
    with pytest.raises(ScribbleFormatError, match="not a number"):
        parse_scribble_xml(bad)
    with pytest.raises(ScribbleFormatError, match="no <tag>"):
        parse_scribble_xml(b"<annotation><polygon><point><X>1</X><Y>1</Y></point></polygon>"
                           b"</annotation>")


def test_parse_polyline_text():
    ann = parse_polyline_text("s.txt", "# comment\n\n3,1,2,5,6\ncat, 0,0\n")
    assert [s.tag for s in ann.strokes] == ["3", "cat"]
    np.testing.assert_array_equal(ann.strokes[0].points, [[1, 2], [5, 6]])
    with pytest.raises(ScribbleFormatError, match=r"s\.txt:1.*even"):
        parse_polyline_text("s.txt", "3,1,2,5\n")
    with pytest.raises(ScribbleFormatError, match=r"s\.txt:2.*non-numeric"):
        parse_polyline_text("s.txt", "3,1,2\n4,a,b\n")


def test_rasterize_horizontal_line_width3():
    out = rasterize_strokes([(5, np.array([[2.0, 10.0], [12.0, 10.0]]))], (20, 20))
    assert out.dtype == np.uint8
    ys, xs = np.nonzero(out != 255)
    assert set(np.unique(out[out != 255])) == {5}
    assert ys.min() == 9 and ys.max() == 11
    assert xs.min() == 1 and xs.max() == 13
    assert np.count_nonzero(out != 255) == 3 * 13


def test_rasterize_single_point_and_width1():
    out = rasterize_strokes([(1, np.array([[4.0, 4.0]]))], (9, 9), width=1)
    assert np.count_nonzero(out != 255) == 1 and out[4, 4] == 1


@pytest.mark.parametrize(
    "pts",
    [
        [[-50.0, -50.0], [60.0, 40.0]],        # crosses the image from outside
        [[5.0, 5.0], [1e9, 5.0]],              # absurdly far point: clipped, no blow-up
        [[-10.0, -10.0], [-5.0, -20.0]],       # entirely outside: nothing drawn
        [[3.0, 3.0], [20.0, 8.0], [7.0, 25.0], [-4.0, 12.0]],
    ],
)
def test_rasterize_pixels_sit_on_polyline(pts):
    pts = np.asarray(pts)
    out = rasterize_strokes([(2, pts)], (30, 40))
    ys, xs = np.nonzero(out != 255)
    if len(ys):
        d = seg_distance(np.stack([xs, ys], 1).astype(float), pts)
        # a 3x3 brush around rounded centre-line pixels: within sqrt(2) + 0.5
        assert d.max() <= np.sqrt(2) + 0.5 + 1e-9
    # and the polyline's in-image samples are all labelled
    t = np.linspace(0, 1, 200)[:, None]
    for a, b in itertools.pairwise(pts):
        s = np.rint(a + t * (b - a)).astype(int)
        inside = (s[:, 0] >= 0) & (s[:, 0] < 40) & (s[:, 1] >= 0) & (s[:, 1] < 30)
        assert np.all(out[s[inside, 1], s[inside, 0]] == 2)


def test_rasterize_later_strokes_overwrite():
    out = rasterize_strokes([(1, np.array([[0.0, 5.0], [9.0, 5.0]])),
                             (2, np.array([[5.0, 0.0], [5.0, 9.0]]))], (10, 10))
    assert out[5, 5] == 2 and out[5, 0] == 1


# --------------------------------------------------------------------------- batch converter


@pytest.fixture
def scribble_batch(tmp_path):
    """A tiny ScribbleSup-style batch: good files and every kind of bad one."""
    xml, img = tmp_path / "xml", tmp_path / "img"
    xml.mkdir()
    img.mkdir()
    write_jpeg(img / "good.jpg", 40, 50)
    (xml / "good.xml").write_text(xml_doc(
        [("cat", [(5, 5), (30, 20)]), ("grass", [(2, 35), (45, 35)]),
         ("plane", [(-20, 10), (80, 10)])],               # out-of-bounds points
        size=(40, 50), filename="good.jpg"))
    write_jpeg(img / "text.jpg", 30, 30, seed=1)
    (xml / "text.txt").write_text("15,3,3,20,20\nbackground,0,25,29,25\n")
    (xml / "noimage.xml").write_text(xml_doc([("dog", [(1, 1), (5, 5)])], size=(10, 10)))
    (img / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"garbage" * 10)
    (xml / "corrupt.xml").write_text(xml_doc([("dog", [(1, 1), (5, 5)])]))
    write_jpeg(img / "trunc.jpg", 20, 20)
    (xml / "trunc.xml").write_text(xml_doc([("dog", [(1, 1), (5, 5)])])[:-25])
    write_jpeg(img / "mismatch.jpg", 20, 20)
    (xml / "mismatch.xml").write_text(xml_doc([("dog", [(1, 1), (5, 5)])], size=(25, 20)))
    write_jpeg(img / "bomb.jpg", 20, 20)
    (xml / "bomb.xml").write_text(
        '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY e "x">]><annotation>&e;</annotation>')
    return xml, img, tmp_path / "out"


BAD = {"noimage", "corrupt", "trunc", "mismatch", "bomb"}


def test_convert_directory_reports_bad_files_and_converts_rest(scribble_batch):
    xml, img, out = scribble_batch
    summary = convert_directory(xml, out, images_dir=img, workers=1, progress=False)
    status = {Path(r.source).stem: r for r in summary.results}
    assert {k for k, r in status.items() if r.status == "failed"} == BAD
    for name in BAD:
        assert name in status[name].message, status[name].message
    assert "corrupt.jpg" in status["corrupt"].message
    assert "<size>" in status["mismatch"].message
    assert status["good"].status == "converted" and status["text"].status == "converted"
    assert not summary.ok
    assert sorted(p.stem for p in out.iterdir()) == ["good", "text"]
    good = read_label(out / "good.png")
    assert good.shape == (40, 50)
    assert set(np.unique(good)) == {0, 1, 8, 255}  # background (grass), plane, cat
    assert status["good"].unknown_tags == {"grass": 1}
    assert 0 < status["good"].labelled_fraction < 0.5
    text = summary.format()
    assert "grass x1" in text and "5 failed" in text


def test_convert_round_trip_pixels_on_polylines(scribble_batch):
    xml, img, out = scribble_batch
    convert_file(xml / "good.xml", out / "good.png", images_dir=img)
    label = read_label(out / "good.png")
    cat = np.array([[5.0, 5.0], [30.0, 20.0]])
    ys, xs = np.nonzero(label == 8)
    assert len(ys) > 20
    assert seg_distance(np.stack([xs, ys], 1).astype(float), cat).max() <= 2.0


def test_convert_tag_policies(scribble_batch):
    xml, img, out = scribble_batch
    r = convert_file(xml / "good.xml", out / "ign.png", images_dir=img, tag_policy="ignore")
    assert r.status == "converted"
    assert 0 not in np.unique(read_label(out / "ign.png"))
    r = convert_file(xml / "good.xml", out / "err.png", images_dir=img, tag_policy="error")
    assert r.status == "failed" and "grass" in r.message and "good.xml" in r.message
    assert not (out / "err.png").exists()


def test_convert_size_mismatch_warn(scribble_batch):
    xml, img, out = scribble_batch
    r = convert_file(xml / "mismatch.xml", out / "m.png", images_dir=img, size_mismatch="warn")
    assert r.status == "converted" and "used the image size" in r.message
    assert read_label(out / "m.png").shape == (20, 20)


def test_convert_without_images_uses_xml_size(scribble_batch):
    xml, _, out = scribble_batch
    r = convert_file(xml / "mismatch.xml", out / "m.png")
    assert r.status == "converted"
    assert read_label(out / "m.png").shape == (25, 20)
    r = convert_file(xml / "text.txt", out / "t.png")
    assert r.status == "failed" and "no image size" in r.message


def test_convert_idempotent_and_parallel(scribble_batch):
    xml, img, out = scribble_batch
    first = convert_directory(xml, out, images_dir=img, workers=1, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    again = convert_directory(xml, out, images_dir=img, workers=1, progress=False)
    assert again.count("skipped") == 2 and again.count("converted") == 0
    assert again.mean_labelled_fraction == pytest.approx(first.mean_labelled_fraction)
    out2 = out.parent / "out2"
    par = convert_directory(xml, out2, images_dir=img, workers=2, progress=False,
                            files=sorted(xml.iterdir()) * 1)
    assert par.count("converted") == 2
    assert {p.name: p.read_bytes() for p in out2.iterdir()} == before
    over = convert_directory(xml, out, images_dir=img, workers=1, progress=False,
                             overwrite=True)
    assert over.count("converted") == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_convert_many_files_with_process_pool(tmp_path):
    xml, img = tmp_path / "xml", tmp_path / "img"
    xml.mkdir()
    img.mkdir()
    for i in range(6):
        write_jpeg(img / f"im{i}.jpg", 16, 16, seed=i)
        (xml / f"im{i}.xml").write_text(xml_doc([("cow", [(1, 1), (14, 14 - i)])]))
    (xml / "im_bad.xml").write_text("<annotation><polygon>")
    summary = convert_directory(xml, tmp_path / "o", images_dir=img, workers=2, progress=False)
    assert summary.count("converted") == 6 and summary.count("failed") == 1
    assert "im_bad.xml" in summary.failed[0].message


def test_cli_convert_exit_status(scribble_batch, capsys):
    xml, img, out = scribble_batch
    rc = cli_main(["scribbles", "convert", str(xml), "--images", str(img), "--out", str(out),
                   "--workers", "1", "--no-progress"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "trunc.xml" in err and "5 of 7 files failed" in err and "2 written" in err
    for p in (xml / n for n in ("noimage.xml", "corrupt.xml", "trunc.xml", "mismatch.xml",
                                "bomb.xml")):
        p.unlink()
    rc = cli_main(["scribbles", "convert", str(xml), "--images", str(img), "--out", str(out),
                   "--workers", "1", "--no-progress"])
    assert rc == 0
    assert "mean labelled-pixel fraction" in capsys.readouterr().out


def test_cli_convert_missing_folder(tmp_path, capsys):
    rc = cli_main(["scribbles", "convert", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "nope" in capsys.readouterr().err
