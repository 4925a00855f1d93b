"""The embedded "digits on photos" detection data set, in COCO format.

A small but non-trivial detection task that needs no download: handwritten
digits from ``sklearn.datasets.load_digits`` (1797 8x8 glyphs) are upscaled
smoothly, colourised and alpha-blended at random sizes and positions onto
low-contrast crops of the photos bundled with ``skimage.data`` (or onto smooth
colour noise). Each image holds ``min_digits..max_digits`` digits (about 3% hold
none), which may partly overlap; the 10 classes are the digits 0..9.

Train and val draw their digits from disjoint handwriting samples
(:func:`digit_split_indices`), so val measures generalisation to unseen
glyphs. Generation is deterministic in ``seed`` and is cached on disk::

    out_dir/train/000000.png ...      out_dir/annotations/train.json
    out_dir/val/000000.png ...        out_dir/annotations/val.json
    out_dir/meta.json                 (all generation parameters)
"""
import json
import os
import shutil
import warnings

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter
from skimage.transform import resize

from .. import jsonio

FORMAT_VERSION = 1  # bump when the generator changes, so old caches are rejected
EMPTY_FRACTION = 0.03  # share of images with no digit (detectors must cope)
VAL_SHARE = 0.2  # share of the handwriting samples held out for val
MAX_IOU = 0.4  # reject a placement overlapping an existing box more than this
MAX_COVER = 0.5  # ... or hiding more than this share of an existing box
MIN_COLOUR_GAP = 0.5  # digit target colour vs background mean (before `contrast`)
ALPHA_BOX = 0.1  # the box is the extent of glyph alpha above this
# Only photos that ship inside skimage 0.26 itself (no pooch download needed).
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon",
          "page", "text", "brick", "grass", "gravel", "immunohistochemistry",
          "hubble_deep_field", "colorwheel", "cat", "clock", "cell")
_PHOTO_SIDE = 256  # photos are shrunk once so random crops resize quickly


def digit_split_indices():
    """Return ``(train_idx, val_idx)``: the load_digits sample indices per split.

    The split is contiguous in sample order (first 80% train, last 20% val),
    independent of the seed, so val handwriting is never seen in training.
    """
    n = 1797
    cut = int(round(n * (1 - VAL_SHARE)))
    return np.arange(cut), np.arange(cut, n)


def _load_photos():
    """The bundled photos as PIL RGB images with longer side <= _PHOTO_SIDE."""
    import skimage.data
    photos = []
    for name in PHOTOS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                img = np.asarray(getattr(skimage.data, name)())
        except Exception:  # a stripped-down skimage install: use what is there
            continue
        if img.ndim == 2:
            img = np.stack([img] * 3, -1)
        pil = Image.fromarray(img[..., :3].astype(np.uint8))
        pil.thumbnail((_PHOTO_SIDE, _PHOTO_SIDE), Image.LANCZOS)
        photos.append(pil)
    if not photos:
        raise RuntimeError("no skimage.data photo could be loaded offline")
    return photos


def _background(rng, photos, size, noise_fraction):
    """A float32 (size, size, 3) background in [0, 1]."""
    if rng.random() < noise_fraction:
        # Smooth colour noise: blobs whose scale varies from image to image.
        sigma = rng.uniform(1.5, 8.0) * size / 64
        bg = gaussian_filter(rng.standard_normal((size, size, 3)), (sigma, sigma, 0))
        bg = bg / (np.abs(bg).max(axis=(0, 1)) + 1e-8)  # per channel to [-1, 1]
        bg = rng.uniform(0.2, 0.8, 3) + bg * rng.uniform(0.1, 0.3, 3)
    else:
        photo = photos[rng.integers(len(photos))]
        w, h = photo.size
        side = rng.uniform(0.25, 1.0) * min(w, h)  # random scale ...
        x0, y0 = rng.uniform(0, w - side), rng.uniform(0, h - side)  # ... and position
        crop = photo.resize((size, size), Image.BILINEAR, box=(x0, y0, x0 + side, y0 + side))
        bg = np.asarray(crop, np.float32) / 255.0
        if rng.random() < 0.5:
            bg = bg[:, ::-1]
        # Lower the photo contrast so that digits are not the only strong edges.
        mean = bg.mean(axis=(0, 1))
        bg = mean + rng.uniform(0.4, 0.9) * (bg - mean)
    return np.clip(bg, 0, 1).astype(np.float32)


def _place(rng, boxes, w, h, size, tries=20):
    """A top-left corner for a w x h paste, or None if every try overlaps too much."""
    for _ in range(tries):
        x, y = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
        ok = True
        for bx, by, bw, bh in boxes:
            iw = min(x + w, bx + bw) - max(x, bx)
            ih = min(y + h, by + bh) - max(y, by)
            inter = max(iw, 0) * max(ih, 0)
            # New digits are drawn on top: keep most of each earlier one visible.
            if inter > MAX_IOU * (w * h + bw * bh - inter) or inter > MAX_COVER * bw * bh:
                ok = False
                break
        if ok:
            return x, y
    return None


def _make_split(name, n, rng, glyphs, labels, pool, photos, out_dir, p, bar):
    img_dir = os.path.join(out_dir, name)
    os.makedirs(img_dir, exist_ok=True)
    size = p["image_size"]
    lo, hi = np.log(p["min_digit_size"]), np.log(p["max_digit_size"])
    images, anns = [], []
    for i in range(n):
        img = _background(rng, photos, size, p["noise_fraction"])
        k = 0 if rng.random() < EMPTY_FRACTION else int(rng.integers(p["min_digits"], p["max_digits"] + 1))
        boxes = []
        for _ in range(k):
            h = int(round(np.exp(rng.uniform(lo, hi))))  # log-uniform: small and large
            w = max(int(round(h * rng.uniform(0.65, 0.9))), 2)  # digits are taller than wide
            pos = _place(rng, [b[:4] for b in boxes], w, h, size)
            if pos is None:
                continue
            x, y = pos
            idx = int(pool[rng.integers(len(pool))])
            # Bicubic upscaling, then a contrast stretch: thresholding the smooth field
            # gives round stroke outlines instead of blurry 8x8 blocks.
            alpha = resize(glyphs[idx], (h, w), order=3, mode="constant", anti_aliasing=False)
            alpha = np.clip((alpha - 0.2) / 0.5, 0, 1)
            rows, cols = np.nonzero(alpha > ALPHA_BOX)
            if rows.size == 0:
                continue
            patch = img[y:y + h, x:x + w]
            bg_mean = patch.mean(axis=(0, 1))
            # A random target colour at least MIN_COLOUR_GAP from the background mean in
            # some channel, blended back toward it by `contrast`: visible, not glaring.
            cand = rng.uniform(0, 1, (8, 3))
            far = np.abs(cand - bg_mean).max(axis=1) >= MIN_COLOUR_GAP
            target = cand[far.argmax()] if far.any() else np.round(1 - bg_mean)
            colour = bg_mean + rng.uniform(*p["contrast"]) * (target - bg_mean)
            a = alpha[..., None] * rng.uniform(0.85, 1.0)
            img[y:y + h, x:x + w] = patch * (1 - a) + colour * a
            # Tight box: the visible ink of this glyph, not the paste rectangle.
            bx, by = x + cols.min(), y + rows.min()
            bw, bh = cols.max() - cols.min() + 1, rows.max() - rows.min() + 1
            boxes.append((int(bx), int(by), int(bw), int(bh), int(labels[idx]), idx))
        img = img + rng.normal(0, rng.uniform(0.005, 0.03), img.shape)  # mild sensor noise
        fname = f"{i:06d}.png"
        Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)).save(
            os.path.join(img_dir, fname))
        images.append({"id": i + 1, "file_name": fname, "width": size, "height": size})
        for bx, by, bw, bh, label, idx in boxes:
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": label + 1,
                         "bbox": [float(bx), float(by), float(bw), float(bh)],
                         "area": float(bw * bh), "iscrowd": 0, "digit_index": idx})
        if bar is not None:
            bar.update(1)
    coco = {"images": images, "annotations": anns,
            "categories": [{"id": d + 1, "name": str(d), "supercategory": "digit"} for d in range(10)]}
    ann_path = os.path.join(out_dir, "annotations", f"{name}.json")
    with open(ann_path, "w") as f:
        jsonio.dump(coco, f)
    return {"images": img_dir, "annotations": ann_path}


def make_synthetic(out_dir="data/digits", *, num_train=4000, num_val=500, image_size=64,
                   min_digits=1, max_digits=4, min_digit_size=12, max_digit_size=40,
                   seed=0, noise_fraction=0.25, contrast=(0.6, 1.0), progress=True,
                   overwrite=False) -> dict:
    """Generate (or reuse) the digits-on-photos COCO data set in ``out_dir``.

    Parameters:
        out_dir: folder for images, annotations and meta.json.
        num_train, num_val: number of images per split (>= 1).
        image_size: side of the square RGB images in pixels.
        min_digits, max_digits: digits per image (about 3% of images get none).
        min_digit_size, max_digit_size: digit height range in pixels, sampled
            log-uniformly; width is 0.65-0.9 of the height. The box is the ink
            extent, so it can be a little smaller than the sampled size.
        seed: random seed; the same parameters give byte-identical output.
        noise_fraction: share of images with smooth-noise instead of photo backgrounds.
        contrast: (low, high) in (0, 1]; how far the digit colour is moved from
            the local background colour toward a contrasting one.
        progress: show a tqdm progress bar.
        overwrite: regenerate even if out_dir holds a data set with other parameters.

    Returns:
        ``{"train": {"images": dir, "annotations": json}, "val": {...}, "num_classes": 10}``.

    Raises:
        ValueError: for a bad argument, or if out_dir holds a data set generated
            with other parameters and ``overwrite`` is False.
    """
    def check(ok, arg, msg):
        if not ok:
            raise ValueError(f"{arg}: {msg}")

    check(int(num_train) == num_train and num_train >= 1, "num_train", f"must be an integer >= 1, got {num_train}")
    check(int(num_val) == num_val and num_val >= 1, "num_val", f"must be an integer >= 1, got {num_val}")
    check(image_size >= 16, "image_size", f"must be >= 16, got {image_size}")
    check(min_digits >= 0, "min_digits", f"must be >= 0, got {min_digits}")
    check(max_digits >= max(min_digits, 1), "max_digits", f"must be >= max(min_digits, 1), got {max_digits}")
    check(min_digit_size >= 6, "min_digit_size", f"must be >= 6, got {min_digit_size}")
    check(min_digit_size <= max_digit_size, "min_digit_size",
          f"must be <= max_digit_size ({max_digit_size}), got {min_digit_size}")
    check(max_digit_size <= image_size, "max_digit_size",
          f"must be <= image_size ({image_size}), got {max_digit_size}")
    check(0.0 <= noise_fraction <= 1.0, "noise_fraction", f"must be in [0, 1], got {noise_fraction}")
    check(len(contrast) == 2 and 0 < contrast[0] <= contrast[1] <= 1, "contrast",
          f"must be (low, high) with 0 < low <= high <= 1, got {contrast}")

    p = {"format_version": FORMAT_VERSION, "num_train": int(num_train), "num_val": int(num_val),
         "image_size": int(image_size), "min_digits": int(min_digits), "max_digits": int(max_digits),
         "min_digit_size": int(min_digit_size), "max_digit_size": int(max_digit_size),
         "seed": int(seed), "noise_fraction": float(noise_fraction),
         "contrast": [float(c) for c in contrast], "empty_fraction": EMPTY_FRACTION,
         "min_colour_gap": MIN_COLOUR_GAP,
         "val_share": VAL_SHARE, "photos": list(PHOTOS)}
    out_dir = str(out_dir)
    result = {s: {"images": os.path.join(out_dir, s),
                  "annotations": os.path.join(out_dir, "annotations", f"{s}.json")}
              for s in ("train", "val")}
    result["num_classes"] = 10
    meta_path = os.path.join(out_dir, "meta.json")
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            old = json.load(f)
        if old == p and not overwrite:
            return result  # cached
        if not overwrite:
            raise ValueError(f"{out_dir} holds a data set made with other parameters ({meta_path}); "
                             "delete that folder, regenerate it (rmkd data synth --overwrite, or overwrite=True) "
                             "or point data.synth.out elsewhere")
        for sub in ("train", "val", "annotations"):  # drop stale images of the old set
            shutil.rmtree(os.path.join(out_dir, sub), ignore_errors=True)
        os.remove(meta_path)

    from sklearn.datasets import load_digits
    digits = load_digits()
    glyphs = (digits.images / 16.0).astype(np.float32)
    photos = _load_photos()
    os.makedirs(os.path.join(out_dir, "annotations"), exist_ok=True)
    # Independent streams per split: val does not change when num_train does.
    rng_train, rng_val = (np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(2))
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=num_train + num_val, desc="digits data", unit="img")
    try:
        for name, n, rng, pool in zip(("train", "val"), (num_train, num_val),
                                      (rng_train, rng_val), digit_split_indices()):
            _make_split(name, n, rng, glyphs, digits.target, pool, photos, out_dir, p, bar)
    finally:
        if bar is not None:
            bar.close()
    with open(meta_path, "w") as f:  # written last: a half-made set is never "cached"
        jsonio.dump(p, f, indent=2)
    return result
