"""A small real instance-segmentation data set in COCO format: the coins photograph shipped with
scikit-image (`skimage.data.coins()`, 303x384 greyscale, 24 Greek coins from the Brooklyn Museum
collection), with instance masks from scikit-image's documented region-based segmentation (Sobel
elevation map, intensity markers, watershed; "Comparing edge-based and region-based
segmentation" in the scikit-image gallery), one class `coin`.

The labels are made by a classical algorithm, not drawn by people; the images are real. The
photograph is split by coin row: 128x128 training crops come from the top three rows of coins
(18 coins), validation windows (the bottom strip's full height x 128) from the bottom row (6
coins), so no validation coin is seen in training. A coin cut by a crop border is an instance of
its visible part, as in crop augmentation.

Usage (writes train/ and val/ with instances.json and PNG images):
    python3 -m venv .venv-data && .venv-data/bin/pip install scikit-image==0.26.0 pillow
    .venv-data/bin/python scripts/datasets/coins_to_coco.py --out datasets/coins
"""

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage as ndi
from skimage import data, measure, morphology, segmentation
from skimage.filters import sobel


def coin_labels(image):
    """Instance labels (0 = background) by the gallery's region-based recipe."""
    elevation = sobel(image)
    markers = np.zeros_like(image, dtype=np.int32)
    markers[image < 30] = 1
    markers[image > 150] = 2
    region = segmentation.watershed(elevation, markers) == 2
    region = ndi.binary_fill_holes(region)
    region = morphology.remove_small_objects(region, max_size=40)
    labels, _ = ndi.label(region)
    # Touching coins would share a label; the gallery's photograph has none touching (checked below).
    return labels


def polygons(mask):
    """COCO polygons of a binary mask: the 0.5 iso-line between pixel centres, in COCO's
    coordinates where pixel i spans [i, i + 1) (so its centre is i + 0.5), x before y."""
    out = []
    for c in measure.find_contours(np.pad(mask, 1).astype(np.uint8), 0.5):
        c = c - 1.0 + 0.5
        if len(c) >= 3:
            out.append([round(float(v), 2) for yx in c for v in (yx[1], yx[0])])
    return out


def crops(y_range, x_range, count, size, rng):
    """`count` random crop origins of a `size` (height, width) window inside the ranges."""
    (y0, y1), (x0, x1), (h, w) = y_range, x_range, size
    return [(int(rng.integers(y0, y1 - h + 1)), int(rng.integers(x0, x1 - w + 1))) for _ in range(count)]


def write_split(out, image, labels, origins, size, first_id, min_area):
    h, w = size
    out.mkdir(parents=True, exist_ok=True)
    (out / "images").mkdir(exist_ok=True)
    images, anns = [], []
    ann_id = first_id
    for k, (y, x) in enumerate(origins):
        img = image[y : y + h, x : x + w]
        lab = labels[y : y + h, x : x + w]
        name = f"coins_{k:04d}.png"
        Image.fromarray(np.stack([img] * 3, axis=-1)).save(out / "images" / name)
        images.append({"id": k + 1, "file_name": f"images/{name}", "height": h, "width": w})
        for v in np.unique(lab):
            if v == 0:
                continue
            m = lab == v
            if m.sum() < min_area:
                continue
            ys, xs = np.nonzero(m)
            bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
            anns.append({
                "id": ann_id, "image_id": k + 1, "category_id": 1, "iscrowd": 0,
                "area": int(m.sum()), "bbox": bbox, "segmentation": polygons(m),
            })
            ann_id += 1
    coco = {
        "info": {"description": "scikit-image coins, watershed labels (scripts/datasets/coins_to_coco.py)"},
        "images": images,
        "annotations": anns,
        "categories": [{"id": 1, "name": "coin", "supercategory": "coin"}],
    }
    (out / "instances.json").write_text(json.dumps(coco))
    return len(images), len(anns), ann_id


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--train-crops", type=int, default=200)
    ap.add_argument("--val-crops", type=int, default=40)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    image = data.coins()
    labels = coin_labels(image)
    n = labels.max()
    assert n == 24, f"expected the photograph's 24 coins, found {n}"
    # Row split: the middle of the last coin-free band of rows above the bottom row of coins.
    rows = (labels > 0).any(axis=1)
    last = int(np.nonzero(rows)[0].max())
    bottom_top = last
    while bottom_top > 0 and rows[bottom_top - 1]:
        bottom_top -= 1
    gap_top = bottom_top
    while gap_top > 0 and not rows[gap_top - 1]:
        gap_top -= 1
    split = (gap_top + bottom_top) // 2
    below = [l for l in np.unique(labels[split:]) if l]
    assert len(below) == 6 and not set(below) & set(np.unique(labels[:split])), "the bottom row is not separable"
    rng = np.random.default_rng(args.seed)
    s = args.size
    H, W = image.shape
    train = crops((0, split), (0, W), args.train_crops, (s, s), rng)
    val = crops((split, H), (0, W), args.val_crops, (H - split, s), rng)
    a = write_split(args.out / "train", image, labels, train, (s, s), 1, 20)
    b = write_split(args.out / "val", image, labels, val, (H - split, s), a[2], 20)
    print(f"{n} coins; training crops above y={split}, validation windows below")
    print(f"train: {a[0]} images, {a[1]} instances -> {args.out / 'train' / 'instances.json'}")
    print(f"val:   {b[0]} images, {b[1]} instances -> {args.out / 'val' / 'instances.json'}")


if __name__ == "__main__":
    main()
