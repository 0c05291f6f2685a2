"""Label conventions and dataset constants, in one place.

Crop padding is carried by the ``roi`` tensor, never by a label value (the
reference used 254 for padding, which confused its users).
"""

from __future__ import annotations

#: Label value of unlabelled / ignored pixels (scribble background, VOC void).
IGNORE_INDEX: int = 255

#: PASCAL VOC 2012 class names, index = label value.
VOC_CLASSES: tuple[str, ...] = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
VOC_NUM_CLASSES: int = len(VOC_CLASSES)

#: ImageNet statistics used to normalise network inputs (RGB, 0..255 scale).
IMAGENET_MEAN_255: tuple[float, float, float] = (123.675, 116.28, 103.53)
IMAGENET_STD_255: tuple[float, float, float] = (58.395, 57.12, 57.375)


def voc_palette() -> list[int]:
    """The standard PASCAL VOC colour palette as a flat list of 768 ints (PIL ``putpalette``)."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette
