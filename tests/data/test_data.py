"""Readers, bad-input policy, dataset, collate and loader (yolo_loss/data/{coco,voc,dataset}.py).

Fixtures are written into tmp_path: small JPEGs made with PIL, a COCO file with non-contiguous category ids
(listed out of order), a crowd box, a negative image and a box partly outside its image; a VOC folder with two
XMLs, a difficult object and a box touching pixel 1 (1-based). The last tests read the real subsets in
../shared/data (or $YOLO_LOSS_SHARED_DATA) and skip, saying why, when they are absent.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.cocoeval import COCOeval
from torch.utils.data import Dataset

from yolo_loss.config.schema import AugmentConfig, DataConfig, ShapesConfig
from yolo_loss.data import (VOC_CLASSES, DataError, DetectionDataset, build_dataset, build_loader,
                            collate, read_coco, read_voc, seed_worker)
from yolo_loss.data import cache as cache_module
from yolo_loss.data.cache import cache_bytes
from yolo_loss.data.images import check_image_file, decode_image_file

# ---------------------------------------------------------------------------------------------- fixtures


def write_jpeg(path: Path, width: int, height: int, seed: int = 0) -> bytes:
    """A random-noise JPEG of ``width x height``; returns its bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG", quality=90)
    return path.read_bytes()


def write_json(path: Path, content: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))
    return path


def coco_json(images: list[dict], annotations: list[dict]) -> dict:
    # Categories out of order and with gaps: class index follows the sorted ids 3, 7, 12.
    categories = [{"id": 12, "name": "zebra"}, {"id": 3, "name": "car"}, {"id": 7, "name": "boat"}]
    return {"images": images, "annotations": annotations, "categories": categories}


@pytest.fixture()
def coco_folder(tmp_path: Path) -> Path:
    """Images 2 (40x40, no boxes), 5 (64x48: two boxes and a crowd) and 9 (50x30: a box crossing x = 50)."""
    root = tmp_path / "coco"
    for name, (width, height) in {"a.jpg": (64, 48), "b.jpg": (40, 40), "c.jpg": (50, 30)}.items():
        write_jpeg(root / "images" / "val" / name, width, height)
    images = [{"id": 5, "file_name": "a.jpg", "width": 64, "height": 48},
              {"id": 2, "file_name": "b.jpg", "width": 40, "height": 40},
              {"id": 9, "file_name": "c.jpg", "width": 50, "height": 30}]
    annotations = [
        {"id": 1, "image_id": 5, "category_id": 12, "bbox": [10, 5, 20, 15], "area": 250.0, "iscrowd": 0},
        {"id": 2, "image_id": 5, "category_id": 3, "bbox": [0.5, 1.5, 8, 9.25], "area": 60.0, "iscrowd": 0},
        {"id": 3, "image_id": 5, "category_id": 7, "bbox": [30, 20, 30, 25], "area": 700.0, "iscrowd": 1},
        {"id": 4, "image_id": 9, "category_id": 3, "bbox": [40, 10, 20, 10], "area": 200.0, "iscrowd": 0},
    ]
    write_json(root / "annotations" / "val.json", coco_json(images, annotations))
    return root


def voc_xml(width: int, height: int, objects: list[tuple[str, int, tuple[Any, Any, Any, Any]]]) -> str:
    parts = [f"<annotation><size><width>{width}</width><height>{height}</height><depth>3</depth></size>"]
    for name, difficult, (xmin, ymin, xmax, ymax) in objects:
        parts.append(f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{xmin}</xmin>"
                     f"<ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>")
    return "".join(parts) + "</annotation>"


def write_voc(root: Path, images: dict[str, tuple[int, int, str]], split: str = "trainval") -> Path:
    """``images``: stem -> (width, height, xml text); writes VOC2007 with a JPEG per stem and the list."""
    year = root / "VOC2007"
    for stem, (width, height, xml) in images.items():
        write_jpeg(year / "JPEGImages" / f"{stem}.jpg", width, height)
        (year / "Annotations").mkdir(parents=True, exist_ok=True)
        (year / "Annotations" / f"{stem}.xml").write_text(xml)
    (year / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    (year / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{stem}\n" for stem in images))
    return root


@pytest.fixture()
def voc_folder(tmp_path: Path) -> Path:
    """a: a dog from pixel 1 to 10 (1-based, inclusive) and a difficult person; b: a cat and a sofa."""
    return write_voc(tmp_path / "VOCdevkit", {
        "a": (64, 48, voc_xml(64, 48, [("dog", 0, (1, 1, 10, 20)), ("person", 1, (20, 5, 40, 45))])),
        "b": (32, 32, voc_xml(32, 32, [("cat", 0, (5, 6, 7, 8)), ("sofa", 0, (1, 1, 32, 32))])),
    })


def read_fixture(root: Path, on_bad: str = "skip") -> DetectionDataset:
    annotations = read_coco(root / "annotations" / "val.json", root / "images" / "val", on_bad=on_bad)
    return DetectionDataset(annotations.records, annotations.class_names, annotations.category_ids, img_size=32,
                            on_bad=on_bad, bad_input=annotations.bad_input)


# ---------------------------------------------------------------------------------------------- readers


def test_read_coco_exact_records(coco_folder: Path) -> None:
    """Class index by sorted category id (car 3, boat 7, zebra 12); bbox [x, y, w, h] -> xyxy; the crowd kept as
    difficult; the box crossing the right edge of the 50 px image clipped from x2 = 60 to 50 and counted."""
    result = read_coco(coco_folder / "annotations" / "val.json", coco_folder / "images" / "val")
    assert result.class_names == ["car", "boat", "zebra"] and result.category_ids == [3, 7, 12]
    assert [r.image_id for r in result.records] == [2, 5, 9]
    negative, image5, image9 = result.records
    assert negative.num_boxes == 0 and negative.boxes_xyxy.shape == (0, 4)
    assert (image5.width, image5.height, image5.path) == (64, 48, coco_folder / "images" / "val" / "a.jpg")
    np.testing.assert_array_equal(image5.boxes_xyxy, np.array(
        [[10, 5, 30, 20], [0.5, 1.5, 8.5, 10.75], [30, 20, 60, 45]], dtype=np.float32))
    assert image5.labels.tolist() == [2, 0, 1] and image5.difficult.tolist() == [False, False, True]
    assert image5.areas.tolist() == [250.0, 60.0, 700.0]
    np.testing.assert_array_equal(image9.boxes_xyxy, np.array([[40, 10, 50, 20]], dtype=np.float32))
    assert result.bad_input.counts == {"clipped_box": 1}


def test_read_voc_converts_one_based_corners(voc_folder: Path) -> None:
    """VOC (1, 1, 10, 20) covers 1-based pixels 1..10 x 1..20, i.e. 0-based [0, 10] x [0, 20]: only the minimum
    corner moves. (5, 6, 7, 8) -> (4, 5, 7, 8): three pixels wide and high. The difficult person is kept,
    marked; ids follow the list."""
    result = read_voc(voc_folder, ["VOC2007/trainval"])
    assert result.class_names == list(VOC_CLASSES) and result.category_ids == list(range(1, 21))
    image_a, image_b = result.records
    assert (image_a.image_id, image_a.name, image_b.image_id) == (1, "VOC2007/a", 2)
    assert image_a.path == voc_folder / "VOC2007" / "JPEGImages" / "a.jpg"
    np.testing.assert_array_equal(image_a.boxes_xyxy, np.array([[0, 0, 10, 20], [19, 4, 40, 45]], dtype=np.float32))
    assert image_a.labels.tolist() == [VOC_CLASSES.index("dog"), VOC_CLASSES.index("person")]
    assert image_a.difficult.tolist() == [False, True]
    np.testing.assert_array_equal(image_b.boxes_xyxy, np.array([[4, 5, 7, 8], [0, 0, 32, 32]], dtype=np.float32))
    assert result.bad_input.total == 0  # (1, 1, 32, 32) on a 32 px image is the whole image, not clipped


def test_ground_truth_as_coco_ignores_difficult_boxes(coco_folder: Path) -> None:
    """The records back as COCO: original ids and category ids, crowd as iscrowd=1. The ground truth as
    detections scores AP 1, and a detection on the crowd box changes nothing (ignored, not a false positive)."""
    dataset = read_fixture(coco_folder)
    gt = dataset.ground_truth_coco
    assert sorted(gt.getImgIds()) == [2, 5, 9] and sorted(gt.getCatIds()) == [3, 7, 12]
    crowd = [a for a in gt.dataset["annotations"] if a["iscrowd"]]
    assert len(crowd) == 1 and crowd[0]["bbox"] == [30.0, 20.0, 30.0, 25.0] and crowd[0]["category_id"] == 7
    detections = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
                  for a in gt.dataset["annotations"]]
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(gt, gt.loadRes(detections), "bbox")
        evaluator.evaluate(), evaluator.accumulate(), evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------- bad input


def build_bad_coco(root: Path, case: str | None = None) -> Path:
    """A COCO set with one instance of each bad-input kind (or only ``case``) besides a good image."""
    folder = root / "images" / "val"
    good = write_jpeg(folder / "good.jpg", 40, 30)
    images = [{"id": 1, "file_name": "good.jpg", "width": 40, "height": 30}]
    annotations = [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 10, 10], "iscrowd": 0}]
    image_cases = {
        "missing_image": lambda path: None,
        "empty_image": lambda path: path.write_bytes(b""),
        "truncated_image": lambda path: path.write_bytes(good[:len(good) // 2]),
        "corrupt_image": lambda path: path.write_bytes(b"this is not an image at all" * 4),
    }
    box_cases = {
        "nan": ("bad_box", {"category_id": 3, "bbox": [float("nan"), 1, 5, 5]}),
        "negative": ("bad_box", {"category_id": 3, "bbox": [5, 5, -2, 4]}),
        "zero": ("bad_box", {"category_id": 3, "bbox": [5, 5, 0, 4]}),
        "outside": ("bad_box", {"category_id": 3, "bbox": [45, 5, 10, 4]}),
        "clipped": ("clipped_box", {"category_id": 3, "bbox": [35, 5, 10, 4]}),
        "unknown_category": ("unknown_category", {"category_id": 99, "bbox": [5, 5, 10, 4]}),
    }
    for index, (kind, make) in enumerate(image_cases.items(), start=10):
        if case in (None, kind):
            make(folder / f"{kind}.jpg")
            images.append({"id": index, "file_name": f"{kind}.jpg", "width": 40, "height": 30})
    for index, (name, (_, fields)) in enumerate(box_cases.items(), start=10):
        if case in (None, name):
            annotations.append({"id": index, "image_id": 1, "iscrowd": 0, **fields})
    if case in (None, "duplicate_image_id"):  # two files under id 30: whose is the box?
        for name in ("twin_a.jpg", "twin_b.jpg"):
            write_jpeg(folder / name, 40, 30)
            images.append({"id": 30, "file_name": name, "width": 40, "height": 30})
        annotations.append({"id": 30, "image_id": 30, "category_id": 3, "bbox": [2, 2, 8, 8], "iscrowd": 0})
    write_json(root / "annotations" / "val.json", coco_json(images, annotations))
    return root


def test_bad_input_is_dropped_and_counted_under_skip(tmp_path: Path) -> None:
    dataset = read_fixture(build_bad_coco(tmp_path))
    assert dataset.bad_input.counts == {"missing_image": 1, "empty_image": 1, "truncated_image": 1,
                                        "corrupt_image": 1, "bad_box": 4, "clipped_box": 1, "unknown_category": 1,
                                        "duplicate_image_id": 2}
    assert [r.image_id for r in dataset.records] == [1]
    np.testing.assert_array_equal(dataset.records[0].boxes_xyxy, np.array([[1, 1, 11, 11], [35, 5, 40, 9]]))
    summary = dataset.bad_input.summary()
    assert "truncated_image: 1" in summary and "bad_box: 4" in summary and "truncated_image.jpg" in summary
    dataset.bad_input.write(tmp_path / "bad.txt")
    lines = (tmp_path / "bad.txt").read_text().splitlines()
    assert len(lines) == 12 and sum(line.startswith("bad_box\t") for line in lines) == 4


@pytest.mark.parametrize("case, message", [
    ("missing_image", "missing_image.jpg: image file does not exist"),
    ("empty_image", "empty_image.jpg: image file is empty"),
    ("truncated_image", "truncated_image.jpg: image file is truncated"),
    ("corrupt_image", "corrupt_image.jpg: not an image file"),
    ("nan", "good.jpg: annotation 10 (category 3): non-finite coordinate"),
    ("negative", "good.jpg: annotation 11 (category 3): negative width or height"),
    ("zero", "good.jpg: annotation 12 (category 3): zero width or height"),
    ("outside", "good.jpg: annotation 13 (category 3): outside the 40x30 image"),
    ("unknown_category", "good.jpg: annotation 15 (category 99): category id not in the categories"),
    ("duplicate_image_id", "twin_a.jpg: image id 30 in val.json is shared by 2 images (twin_a.jpg, twin_b.jpg)"),
])
def test_bad_input_raises_naming_file_and_object_under_error(tmp_path: Path, case: str, message: str) -> None:
    with pytest.raises(DataError, match=re.escape(message)):
        read_fixture(build_bad_coco(tmp_path, case), on_bad="error")


@pytest.mark.parametrize("content, message", [
    ('[{"id": 1}]', "not a COCO instances file (needs lists 'images', 'annotations' and 'categories')"),
    ('{"images": [], "annotations": []}', "not a COCO instances file (needs lists"),
    ('{"images": [{"file_name": "a.jpg"}], "annotations": [], "categories": []}',
     "not a COCO instances file (an entry lacks 'id')"),
    ('{"images": [', "cannot read the COCO annotation file"),
])
@pytest.mark.parametrize("on_bad", ["skip", "error"])
def test_a_json_that_is_not_coco_is_an_error_under_both_policies(tmp_path: Path, content: str, message: str,
                                                                  on_bad: str) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "not_coco.json").write_text(content)
    with pytest.raises(DataError, match=re.escape(f"not_coco.json: {message}")):
        read_coco(tmp_path / "not_coco.json", tmp_path / "images", on_bad=on_bad)


def test_clipping_is_never_an_error(tmp_path: Path) -> None:
    dataset = read_fixture(build_bad_coco(tmp_path, "clipped"), on_bad="error")
    assert dataset.bad_input.counts == {"clipped_box": 1}


def test_voc_bad_input(tmp_path: Path) -> None:
    """Unreadable XML and a listed stem without XML drop the image; an unknown class, an unreadable coordinate,
    xmax < xmin and a zero-size box as written (xmin = xmax, ymin = ymax: BCCD's two) drop the object, while
    xmax = xmin + 1 is the smallest box kept, two pixels wide; ids keep the list positions (c is 3 although b was
    dropped)."""
    root = write_voc(tmp_path / "VOCdevkit", {
        "a": (40, 30, voc_xml(40, 30, [("dog", 0, (2, 2, 3, 9)), ("unicorn", 0, (1, 1, 5, 5)),
                                        ("cat", 0, ("x", 1, 5, 5)), ("cat", 0, (4, 3, 3, 9)),
                                        ("cat", 0, (7, 8, 7, 8)), ("cat", 0, (7, 8, 12, 8))])),
        "b": (40, 30, "<annotation><size><width>40</width>"),
        "c": (40, 30, voc_xml(40, 30, [])),
        "d": (40, 30, voc_xml(40, 30, [("cat", 0, (2, 2, 9, 9)), ("cat", 0, (7, 8, 7, 8))])),
    })
    (root / "VOC2007" / "ImageSets" / "Main" / "trainval.txt").write_text("a\nb\nc\nmissing\n")
    result = read_voc(root, ["VOC2007/trainval"])
    assert result.bad_input.counts == {"unknown_class": 1, "bad_box": 4, "unreadable_annotation": 2}
    assert [(r.image_id, r.name, r.num_boxes) for r in result.records] == [(1, "VOC2007/a", 1), (3, "VOC2007/c", 0)]
    np.testing.assert_array_equal(result.records[0].boxes_xyxy, [[1, 1, 3, 9]])
    assert result.objects_read == 6 and result.unknown_classes == {"unicorn": 1}
    (root / "VOC2007" / "ImageSets" / "Main" / "d.txt").write_text("d\n")
    with pytest.raises(DataError, match=r"d\.xml: object 2 \('cat', 1-based <bndbox> 7 8 7 8\): zero width or "
                                        r"height \(xmin = xmax or ymin = ymax: a point or a line, not an object\)"):
        read_voc(root, ["VOC2007/d"], on_bad="error")
    with pytest.raises(DataError, match=r"a\.xml: object 2 \('unicorn'\): not one of the 20 VOC classes"):
        read_voc(root, ["VOC2007/trainval"], on_bad="error")
    (root / "VOC2007" / "ImageSets" / "Main" / "trainval.txt").write_text("b\n")
    with pytest.raises(DataError, match=r"b\.xml: annotation is not readable XML"):
        read_voc(root, ["VOC2007/trainval"], on_bad="error")


def test_image_corrupt_inside_is_replaced_by_grey_under_skip(coco_folder: Path) -> None:
    """A JPEG whose header is destroyed but whose end marker is intact passes the cheap check; reading it
    then gives (skip) a grey image without boxes under the same image id, counted, or (error) a DataError."""
    path = coco_folder / "images" / "val" / "a.jpg"
    data = bytearray(path.read_bytes())
    data[20:-10] = bytes(len(data) - 30)
    path.write_bytes(bytes(data))
    dataset = read_fixture(coco_folder)
    assert [r.image_id for r in dataset.records] == [2, 5, 9]
    with pytest.warns(UserWarning, match="a.jpg: image file cannot be decoded"):
        image, target, meta = dataset[1]
    assert torch.all(image == 0.5) and target.shape == (0, 5) and meta["image_id"] == 5
    assert dataset.bad_input.counts["corrupt_image"] == 1
    with pytest.raises(DataError, match="a.jpg: image file cannot be decoded"):
        read_fixture(coco_folder, on_bad="error")[1]


def test_size_mismatch_names_exif_rotation(coco_folder: Path) -> None:
    """The file is 48 x 64 where the annotation says 64 x 48: boxes would land on the wrong pixels."""
    write_jpeg(coco_folder / "images" / "val" / "a.jpg", 48, 64)
    with pytest.raises(DataError, match="decoded 48x64, annotated 64x48 .*EXIF orientation is not applied"):
        read_fixture(coco_folder, on_bad="error")[1]
    annotations = read_coco(coco_folder / "annotations" / "val.json", coco_folder / "images" / "val")
    cached = DetectionDataset(annotations.records, annotations.class_names, annotations.category_ids, 32,
                              cache=True, bad_input=annotations.bad_input)
    assert [r.image_id for r in cached.records] == [2, 9] and cached.bad_input.counts["size_mismatch"] == 1


def test_image_formats_decode_to_rgb(tmp_path: Path) -> None:
    """Grayscale, RGBA PNG, 16-bit PNG and CMYK JPEG through torchvision; BMP through the PIL fallback; all RGB
    uint8."""
    grey = np.arange(12 * 10, dtype=np.uint8).reshape(10, 12)
    Image.fromarray(grey).save(tmp_path / "grey.jpg", quality=100)
    Image.fromarray(np.dstack([grey] * 4)).save(tmp_path / "rgba.png")
    Image.fromarray(grey).convert("CMYK").save(tmp_path / "cmyk.jpg")
    Image.fromarray(grey).convert("RGB").save(tmp_path / "plain.bmp")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "deep.png")  # 16-bit: v * 257 -> v in 8 bits
    for name in ("grey.jpg", "rgba.png", "cmyk.jpg", "plain.bmp", "deep.png"):
        assert check_image_file(tmp_path / name) is None
        image = decode_image_file(tmp_path / name)
        assert image.shape == (3, 10, 12) and image.dtype == torch.uint8
        exact = name in ("rgba.png", "plain.bmp", "deep.png")  # lossless: the grey ramp comes back in every channel
        assert torch.equal(image[1], torch.from_numpy(grey)) if exact else (image[0] - image[2]).abs().max() <= 2


# ---------------------------------------------------------------------------------------------- dataset


def test_getitem_letterbox_target_and_meta(coco_folder: Path) -> None:
    """Image 5 is 64 x 48, S = 32: scale 0.5, resized to 32 x 24, pad_y = 4. (10, 5, 30, 20) -> (5, 6.5, 15, 14):
    cx, cy, w, h = 10, 10.25, 10, 7.5 px; (0.5, 1.5, 8.5, 10.75) -> (0.25, 4.75, 4.25, 9.375). The crowd is out."""
    image, target, meta = read_fixture(coco_folder)[1]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
    expected = torch.tensor([[2, 10, 10.25, 10, 7.5], [0, 2.25, 7.0625, 4, 4.625]])
    torch.testing.assert_close(target, expected / torch.tensor([1, 32, 32, 32, 32]))
    assert meta == {"image_id": 5, "orig_size": (48, 64), "scale": (0.5, 0.5), "pad": (0, 4), "flip": False}


def test_voc_difficult_left_out_of_training_targets(voc_folder: Path) -> None:
    result = read_voc(voc_folder, ["VOC2007/trainval"])
    dataset = DetectionDataset(result.records, result.class_names, result.category_ids, 64,
                               augment=AugmentConfig(), bad_input=result.bad_input)
    torch.manual_seed(0)
    _, target, _ = dataset[0]
    assert target[:, 0].tolist() == [VOC_CLASSES.index("dog")]
    assert dataset.ground_truth_coco.loadAnns(dataset.ground_truth_coco.getAnnIds(imgIds=[1]))[1]["iscrowd"] == 1


def test_cache_gives_the_same_samples(coco_folder: Path) -> None:
    """The cache stores the letterbox resize, so evaluation samples are identical with and without it."""
    plain = read_fixture(coco_folder)
    cached = DetectionDataset(plain.records, plain.class_names, plain.category_ids, 32, cache=True)
    assert cached.cache_nbytes == cache_bytes(plain.records, 32) == 3 * (32 * 32 + 32 * 24 + 32 * 19)
    for index in range(len(plain)):
        (image, target, meta), (image_c, target_c, meta_c) = plain[index], cached[index]
        assert torch.equal(image, image_c)
        torch.testing.assert_close(target, target_c)
        assert meta["pad"] == meta_c["pad"] and meta["scale"] == pytest.approx(meta_c["scale"])


def test_cache_refuses_when_memory_is_short(coco_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_module, "available_memory_bytes", lambda: 4000)
    plain = read_fixture(coco_folder)
    with pytest.raises(DataError, match=r"data.cache=true needs about .* for 3 images .* set data.cache=false"):
        DetectionDataset(plain.records, plain.class_names, plain.category_ids, 32, cache=True)


def test_collate_format(coco_folder: Path) -> None:
    dataset = read_fixture(coco_folder)
    samples = [dataset[i] for i in range(3)]
    images, targets, metas = collate(samples)
    assert images.shape == (3, 3, 32, 32) and torch.equal(images[2], samples[2][0])
    assert targets.shape == (3, 6)
    assert targets[:, 0].tolist() == [1, 1, 2]  # image 0 (id 2) is a negative
    torch.testing.assert_close(targets[:, 1:], torch.cat([s[1] for s in samples]))
    assert [m["image_id"] for m in metas] == [2, 5, 9]
    empty_images, empty_targets, _ = collate([samples[0]])
    assert empty_images.shape == (1, 3, 32, 32) and empty_targets.shape == (0, 6)


def augmented_epoch(dataset: DetectionDataset, workers: int, global_seed: int, loader_seed: int = 7,
                    batch_size: int = 2, skip: int = 0) -> list[torch.Tensor]:
    torch.manual_seed(global_seed)
    loader = build_loader(dataset, batch_size, shuffle=True, workers=workers, seed=loader_seed)
    loader.sampler.start = skip
    return [torch.cat((images.flatten(), targets.flatten())) for images, targets, _ in loader]


def test_loader_is_reproducible_and_drops_the_last_training_batch(coco_folder: Path) -> None:
    annotations = read_coco(coco_folder / "annotations" / "val.json", coco_folder / "images" / "val")
    dataset = DetectionDataset(annotations.records, annotations.class_names, annotations.category_ids, 32,
                               augment=AugmentConfig(jitter=0.3))
    first, again = augmented_epoch(dataset, 0, 1), augmented_epoch(dataset, 0, 1)
    assert len(first) == 1  # 3 images, batches of 2, shuffled: the partial batch is dropped
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    # The augmentation follows the loader's seed alone: not torch's global seed, not the number of workers.
    assert torch.equal(first[0], augmented_epoch(dataset, 0, 2)[0])
    assert torch.equal(first[0], augmented_epoch(dataset, 1, 2)[0])
    assert not torch.equal(first[0], augmented_epoch(dataset, 0, 1, loader_seed=8)[0])
    evaluation = build_loader(dataset, 2, shuffle=False, workers=0, seed=0)
    assert [len(images) for images, _, _ in evaluation] == [2, 1]


def test_epoch_sampler_start_continues_the_epoch_exactly(coco_folder: Path) -> None:
    """A resumed epoch (sampler.start = samples done) yields exactly the rest of the uninterrupted epoch, with the
    same augmentation, and the epoch after it is the same too (the generator advances alike)."""
    annotations = read_coco(coco_folder / "annotations" / "val.json", coco_folder / "images" / "val")
    dataset = DetectionDataset(annotations.records, annotations.class_names, annotations.category_ids, 32,
                               augment=AugmentConfig(jitter=0.3))
    full = augmented_epoch(dataset, 0, 0, batch_size=1)
    assert len(full) == 3
    for skip in (1, 2):
        rest = augmented_epoch(dataset, 0, 0, batch_size=1, skip=skip)
        assert len(rest) == 3 - skip and all(torch.equal(a, b) for a, b in zip(full[skip:], rest))
    loader = build_loader(dataset, 1, shuffle=True, workers=0, seed=7)
    straight = [[images for images, _, _ in loader] for _ in range(2)]
    loader = build_loader(dataset, 1, shuffle=True, workers=0, seed=7)
    loader.sampler.start = 2
    resumed = [[images for images, _, _ in loader] for _ in range(2)]
    assert len(resumed[0]) == 1 and torch.equal(resumed[0][0], straight[0][2])
    assert all(torch.equal(a, b) for a, b in zip(straight[1], resumed[1]))


class _RandomSources(Dataset):
    """Returns what torch, numpy and ``random`` draw in the process that reads the item."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        draws = {"torch": float(torch.rand(())), "numpy": float(np.random.random()), "random": random.random()}
        return torch.zeros(3, 1, 1), torch.zeros(0, 5), draws


def test_seed_worker_seeds_numpy_and_random_with_the_torch_seed() -> None:
    torch.manual_seed(1234)
    seed_worker(0)
    assert np.random.random() == np.random.RandomState(1234).random_sample()
    assert random.random() == random.Random(1234).random()


def test_worker_draws_follow_the_loader_seed() -> None:
    """Two workers, one item per batch: every item draws differently, the same again for the same loader
    seed whatever the global torch seed, and differently for another loader seed."""
    def draws(loader_seed: int, global_seed: int) -> list[tuple[float, ...]]:
        torch.manual_seed(global_seed)
        loader = build_loader(_RandomSources(), 1, shuffle=False, workers=2, seed=loader_seed)
        return [tuple(metas[0].values()) for _, _, metas in loader]

    first = draws(3, 0)
    assert len({value for item in first for value in item}) == 12
    assert first == draws(3, 1)
    assert set(first).isdisjoint(draws(4, 0))


# ---------------------------------------------------------------------------------------------- build_dataset


def test_build_dataset_coco_and_voc(coco_folder: Path, voc_folder: Path) -> None:
    cfg = DataConfig(format="coco", root=str(coco_folder), val_images="images/val",
                     val_annotations="annotations/val.json", img_size=32)
    val = build_dataset(cfg, "val", train=False)
    assert len(val) == 3 and val.augment is None
    assert val.num_classes == 3 and val.class_names == ["car", "boat", "zebra"]
    assert val.bad_input.counts == {"clipped_box": 1}
    voc_cfg = DataConfig(format="voc", root=str(voc_folder), train_sets=["VOC2007/trainval"], img_size=64)
    train = build_dataset(voc_cfg, "train", train=True)
    assert len(train) == 2 and train.augment == voc_cfg.augment and train.num_classes == 20


def test_build_dataset_names_a_missing_path(coco_folder: Path, voc_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=f"{tmp_path / 'nowhere'}: data.root does not exist"):
        build_dataset(DataConfig(format="coco", root=str(tmp_path / "nowhere")), "val", train=False)
    with pytest.raises(DataError, match="annotations/instances_val2017.json: COCO annotation file does not exist"):
        build_dataset(DataConfig(format="coco", root=str(coco_folder)), "val", train=False)
    with pytest.raises(DataError, match="ImageSets/Main/test.txt: VOC image list of set 'VOC2007/test'"):
        build_dataset(DataConfig(format="voc", root=str(voc_folder)), "val", train=False)


def test_build_dataset_shapes_reads_the_generated_split(tmp_path: Path) -> None:
    """format 'shapes' generates the set under data.root and reads images/<split> and instances_<split>.json."""
    cfg = DataConfig(format="shapes", root=str(tmp_path), img_size=32,
                     shapes=ShapesConfig(num_train=3, num_val=2, image_size=32, max_objects=2, seed=0))
    val = build_dataset(cfg, "val", train=False)
    folder = next(tmp_path.glob("shapes-*"))
    expected = json.loads((folder / "annotations" / "instances_val.json").read_text())
    assert [r.image_id for r in val.records] == [image["id"] for image in expected["images"]]
    assert sum(r.num_boxes for r in val.records) == len(expected["annotations"])
    assert all(r.path.parent == folder / "images" / "val" for r in val.records)
    assert len(build_dataset(cfg, "train", train=True)) == 3


# ---------------------------------------------------------------------------------------------- real data


def shared_data() -> Path:
    return Path(os.environ.get("YOLO_LOSS_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (set YOLO_LOSS_SHARED_DATA to the shared/data folder)")
    return path


def test_coco128_val_counts() -> None:
    root = require(shared_data() / "coco128")
    result = read_coco(root / "annotations" / "instances_val2017.json", root / "images" / "val2017")
    assert len(result.records) == 128 and sum(r.num_boxes for r in result.records) == 898
    assert len(result.class_names) == 80 and result.category_ids[:3] == [1, 2, 3] and result.category_ids[-1] == 90
    assert result.class_names[0] == "person" and result.bad_input.total == 0
    assert all(not r.difficult.any() for r in result.records)  # no crowds in this subset


def test_voc_subset_counts_and_corner_convention() -> None:
    """test: 100 images, 515 objects; trainval: 97, 452. The VOC files were written from the COCO boxes as
    1-based corners, so after the -1 the minimum corners agree with COCO's to about half a pixel on average;
    without it they would be a full pixel off."""
    coco_root = require(shared_data() / "coco128")
    voc_root = require(shared_data() / "voc_coco128" / "VOCdevkit")
    test = read_voc(voc_root, ["VOC2007/test"])
    assert len(test.records) == 100 and sum(r.num_boxes for r in test.records) == 515 and test.bad_input.total == 0
    trainval = read_voc(voc_root, ["VOC2007/trainval"])
    assert len(trainval.records) == 97 and sum(r.num_boxes for r in trainval.records) == 452

    coco = read_coco(coco_root / "annotations" / "instances_val2017.json", coco_root / "images" / "val2017")
    coco_by_file = {r.name: r for r in coco.records}
    offsets = []
    for record in test.records:
        reference = coco_by_file[record.path.name].boxes_xyxy
        for box in record.boxes_xyxy:
            nearest = reference[np.abs(reference - box).sum(axis=1).argmin()]
            offsets.append(box[:2] - nearest[:2])
    offsets = np.concatenate(offsets)
    assert len(offsets) == 2 * 515 and abs(offsets.mean()) < 0.3 and np.abs(offsets).max() <= 1.0


def test_augment_seed_changes_the_augmentation_draws_only() -> None:
    """train.augment_seed, the nuisance seed of an A/A check: the same order every epoch, other per-image seeds;
    0 gives exactly the draws of the loader's seed, and the draws stay in [0, 2^62)."""
    from yolo_loss.data.loader import SEED_RANGE, EpochSampler

    def epochs(augment_seed: int) -> list[list[tuple[int, int]]]:
        sampler = EpochSampler(50, torch.Generator().manual_seed(3), augment_seed=augment_seed)
        return [list(sampler) for _ in range(2)]

    plain, again, other = epochs(0), epochs(0), epochs(1)
    unshifted = EpochSampler(50, torch.Generator().manual_seed(3))
    assert plain == again == [list(unshifted), list(unshifted)]
    for epoch_plain, epoch_other in zip(plain, other):
        assert [i for i, _ in epoch_plain] == [i for i, _ in epoch_other]  # the same order
        assert all(a != b for (_, a), (_, b) in zip(epoch_plain, epoch_other))  # every image drawn anew
        assert all(0 <= seed < SEED_RANGE for _, seed in epoch_other)
