"""Tests of the synthetic shapes data set (yolo_loss/data/shapes.py).

The tightness of the boxes is checked as a chain: in memory, the masks are exactly the pixels the
shapes changed and each box is the tight box of its mask; on disk, the JSON holds the same boxes
as a fresh rendering and the JPEG holds the same picture.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from yolo_loss.config.schema import ShapesConfig
from yolo_loss.data import shapes
from yolo_loss.data.shapes import (SHAPE_CLASSES, dataset_name, generate_shapes, image_rng, render_image,
                                   shapes_dataset)

IMAGE_SIZE = 160
DEFAULT_PARAMS = dict(num_train=120, num_val=20, image_size=IMAGE_SIZE, max_objects=6, seed=0)
TINY_PARAMS = dict(num_train=6, num_val=3, image_size=IMAGE_SIZE, max_objects=6, seed=0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 120 + 20 image set at the default image size, shared by the read-only tests."""
    return generate_shapes(tmp_path_factory.mktemp("shapes"), **DEFAULT_PARAMS)


@pytest.fixture(scope="module")
def rendered() -> list[shapes.RenderedImage]:
    """The first 60 training images of seed 0, rendered in memory with their masks."""
    return [render_image(image_rng(0, "train", i), image_size=IMAGE_SIZE, max_objects=6) for i in range(60)]


def read_files(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder``, by relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def block_means(image: np.ndarray, block: int = 4) -> np.ndarray:
    """``[S, S, 3]`` -> ``float[S / block, S / block, 3]`` means of ``block x block`` tiles."""
    size = image.shape[0] // block
    return image.reshape(size, block, size, block, 3).mean(axis=(1, 3))


def load_coco(path: Path) -> COCO:
    """Load an instances file without COCO's progress messages."""
    with contextlib.redirect_stdout(io.StringIO()):  # COCO prints progress
        return COCO(str(path))


def test_same_seed_gives_identical_files(tmp_path: Path) -> None:
    first = generate_shapes(tmp_path / "a", **TINY_PARAMS)
    second = generate_shapes(tmp_path / "b", **TINY_PARAMS)
    assert first.name == second.name
    first_files, second_files = read_files(first), read_files(second)
    assert len([name for name in first_files if name.endswith(".jpg")]) == 9
    assert first_files == second_files


def test_different_seed_gives_different_data(tmp_path: Path) -> None:
    seed0 = generate_shapes(tmp_path, **TINY_PARAMS)
    seed1 = generate_shapes(tmp_path, **{**TINY_PARAMS, "seed": 1})
    assert seed0 != seed1
    for split in ("train", "val"):
        annotations0 = json.loads((seed0 / f"annotations/instances_{split}.json").read_text())["annotations"]
        annotations1 = json.loads((seed1 / f"annotations/instances_{split}.json").read_text())["annotations"]
        assert annotations0 != annotations1
        image0 = (seed0 / f"images/{split}/000000.jpg").read_bytes()
        assert image0 != (seed1 / f"images/{split}/000000.jpg").read_bytes()


def test_folder_name_depends_on_every_parameter() -> None:
    names = {dataset_name(**DEFAULT_PARAMS)}
    for key in DEFAULT_PARAMS:
        names.add(dataset_name(**{**DEFAULT_PARAMS, key: DEFAULT_PARAMS[key] + 1}))
    assert len(names) == len(DEFAULT_PARAMS) + 1
    name = dataset_name(**DEFAULT_PARAMS)
    assert name.startswith("shapes-") and len(name) == len("shapes-") + 12
    int(name.removeprefix("shapes-"), 16)  # hex, or ValueError


@pytest.mark.parametrize("split, count", [("train", 120), ("val", 20)])
def test_coco_files_load_and_are_consistent(dataset: Path, split: str, count: int) -> None:
    coco = load_coco(dataset / f"annotations/instances_{split}.json")
    assert len(coco.getImgIds()) == count
    categories = coco.loadCats(coco.getCatIds())
    assert [(c["id"], c["name"]) for c in categories] == list(enumerate(SHAPE_CLASSES, 1))
    assert sorted(coco.getImgIds()) == list(range(1, count + 1))
    assert len(list((dataset / "images" / split).glob("*.jpg"))) == count
    for image in coco.loadImgs(coco.getImgIds()[:5]):
        with Image.open(dataset / "images" / split / image["file_name"]) as picture:
            assert picture.size == (image["width"], image["height"]) == (IMAGE_SIZE, IMAGE_SIZE)
            assert picture.format == "JPEG" and picture.mode == "RGB"

    annotations = coco.loadAnns(coco.getAnnIds())
    assert sorted(a["id"] for a in annotations) == list(range(1, len(annotations) + 1))
    for annotation in annotations:
        x, y, w, h = annotation["bbox"]
        assert 0 <= x and 0 <= y and w >= 1 and h >= 1
        assert x + w <= IMAGE_SIZE and y + h <= IMAGE_SIZE
        assert 0 < annotation["area"] <= w * h
        assert annotation["iscrowd"] == 0
        assert 1 <= annotation["category_id"] <= len(SHAPE_CLASSES)


def test_ground_truth_as_detections_scores_ap_one(dataset: Path) -> None:
    """COCOeval of the ground truth against itself gives AP 1.0: the file is usable for evaluation
    (ids start at 1, areas and categories are consistent)."""
    coco = load_coco(dataset / "annotations/instances_val.json")
    detections = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                   "score": 1.0} for a in coco.loadAnns(coco.getAnnIds())]
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation = COCOeval(coco, coco.loadRes(detections), iouType="bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)  # AP@[.5:.95]


def test_boxes_are_the_tight_boxes_of_the_masks(rendered: list[shapes.RenderedImage]) -> None:
    """Every mask lies inside its box and touches all four edges: a box one pixel too large, too
    small or shifted on any side fails."""
    checked = 0
    for image in rendered:
        for mask, (x, y, w, h) in zip(image.masks, image.boxes_xywh):
            assert 0 <= x and 0 <= y and x + w <= IMAGE_SIZE and y + h <= IMAGE_SIZE
            inside = np.zeros_like(mask)
            inside[y:y + h, x:x + w] = True
            assert not (mask & ~inside).any()
            assert mask[y, x:x + w].any() and mask[y + h - 1, x:x + w].any()  # top, bottom rows
            assert mask[y:y + h, x].any() and mask[y:y + h, x + w - 1].any()  # left, right columns
            checked += 1
    assert checked > 100


def test_masks_are_exactly_the_pixels_the_shapes_changed(rendered: list[shapes.RenderedImage]) -> None:
    """The masks do not overlap and their union is the set of pixels that differ from the background,
    so a box tight around a mask is tight around what is visible in the image."""
    for image in rendered:
        assert (image.masks.sum(axis=0) <= 1).all()
        changed = (image.image != image.background).any(axis=-1)
        np.testing.assert_array_equal(changed, image.masks.any(axis=0))


def test_shapes_that_touch_differ_in_brightness(rendered: list[shapes.RenderedImage]) -> None:
    """Two objects sharing a border differ by at least 40 levels of luma in fill colour (measured
    here as the mean over their pixels, which the +-24 noise moves by a few levels), so the border
    and thus both boxes can be seen."""
    touching_pairs = 0
    for image in rendered:
        luma = image.image.astype(float) @ shapes.LUMA_WEIGHTS
        mean_luma = [luma[mask].mean() for mask in image.masks]
        grown = [shapes._outer_ring(mask) for mask in image.masks]
        for i in range(len(image.masks)):
            for j in range(i + 1, len(image.masks)):
                if (grown[i] & image.masks[j]).any():
                    touching_pairs += 1
                    assert abs(mean_luma[i] - mean_luma[j]) > 30
    assert touching_pairs >= 10


def test_overlap_leaves_every_object_at_least_half_visible(rendered: list[shapes.RenderedImage]) -> None:
    visible = np.concatenate([image.masks.sum(axis=(1, 2)) for image in rendered])
    drawn = np.concatenate([image.drawn_pixel_counts for image in rendered])
    assert (visible >= (1.0 - shapes.MAX_COVERED_FRACTION) * drawn).all()
    assert (visible < drawn).sum() >= 5, "no occlusion in 60 images: the limit is not being exercised"


def test_files_on_disk_match_a_fresh_rendering(dataset: Path) -> None:
    for split in ("train", "val"):
        coco = load_coco(dataset / f"annotations/instances_{split}.json")
        for index in range(4):
            expected = render_image(image_rng(0, split, index), image_size=IMAGE_SIZE, max_objects=6)
            image = coco.loadImgs(index + 1)[0]
            annotations = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
            np.testing.assert_array_equal(np.array([a["bbox"] for a in annotations]).reshape(-1, 4),
                                          expected.boxes_xywh)
            assert [a["category_id"] for a in annotations] == (expected.labels + 1).tolist()
            assert [a["area"] for a in annotations] == expected.masks.sum(axis=(1, 2)).tolist()
            with Image.open(dataset / "images" / split / image["file_name"]) as picture:
                decoded = np.asarray(picture, dtype=np.int16)
            # JPEG drops much of the pixel noise, so compare 4 x 4 block means: JPEG at quality 90
            # moves them by at most a few levels, an image shifted by one pixel moves some by tens.
            assert np.abs(block_means(decoded) - block_means(expected.image)).max() < 8.0


def test_sizes_aspects_classes_and_negatives(dataset: Path) -> None:
    coco = load_coco(dataset / "annotations/instances_train.json")
    boxes = np.array([a["bbox"] for a in coco.loadAnns(coco.getAnnIds())], dtype=float)
    long_side = boxes[:, 2:].max(axis=1)
    short_side = boxes[:, 2:].min(axis=1)
    assert (long_side < 16).mean() > 0.1
    assert (long_side > 80).mean() > 0.05
    assert (long_side / short_side >= 2.5).sum() >= 10
    categories_seen = {a["category_id"] for a in coco.loadAnns(coco.getAnnIds())}
    assert categories_seen == set(range(1, len(SHAPE_CLASSES) + 1))
    objects_per_image = [len(coco.getAnnIds(imgIds=i)) for i in coco.getImgIds()]
    assert min(objects_per_image) == 0 and max(objects_per_image) <= 6
    assert objects_per_image.count(0) < 0.2 * len(objects_per_image)


def test_second_call_uses_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = generate_shapes(tmp_path, **TINY_PARAMS)
    assert (folder / "DONE").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no temporary folder left behind
    mtimes = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}

    def must_not_render(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached data set was rendered again")

    monkeypatch.setattr(shapes, "render_image", must_not_render)
    start = time.perf_counter()
    assert generate_shapes(tmp_path, **TINY_PARAMS) == folder
    assert time.perf_counter() - start < 0.5
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == mtimes


def test_folder_without_done_marker_is_regenerated(tmp_path: Path) -> None:
    """A folder without DONE (here with an image missing) is not trusted: it is replaced."""
    folder = generate_shapes(tmp_path, **TINY_PARAMS)
    original = read_files(folder)
    (folder / "DONE").unlink()
    (folder / "images/train/000002.jpg").unlink()
    assert generate_shapes(tmp_path, **TINY_PARAMS) == folder
    assert read_files(folder) == original


def test_shapes_dataset_passes_every_config_field(tmp_path: Path) -> None:
    cfg = ShapesConfig(num_train=3, num_val=2, image_size=64, max_objects=2, seed=7)
    folder = shapes_dataset(cfg, tmp_path)
    assert folder == tmp_path / dataset_name(num_train=3, num_val=2, image_size=64, max_objects=2, seed=7)
    info = json.loads((folder / "annotations/instances_val.json").read_text())["info"]
    written = (info["num_train"], info["num_val"], info["image_size"], info["max_objects"], info["seed"])
    assert written == (3, 2, 64, 2, 7)


def test_invalid_parameters_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="num_train"):
        generate_shapes(tmp_path, **{**TINY_PARAMS, "num_train": 0})
    with pytest.raises(ValueError, match="image_size"):
        generate_shapes(tmp_path, **{**TINY_PARAMS, "image_size": 16})


def test_object_size_bounds(tmp_path: Path) -> None:
    """min_long_side and max_long_side: the default bounds keep the folder name the sets had before they were
    parameters (the hash of the old key), other bounds give another folder and bound the drawn sizes; a shape may
    still come out smaller where the border or a later shape cuts it, so the check is on most boxes."""
    old_key = {"generator_version": shapes.GENERATOR_VERSION, **DEFAULT_PARAMS}
    old_name = "shapes-" + hashlib.sha256(json.dumps(old_key, sort_keys=True).encode()).hexdigest()[:12]
    assert dataset_name(**DEFAULT_PARAMS) == old_name
    assert dataset_name(**DEFAULT_PARAMS, min_long_side=16.0) != old_name
    rng = image_rng(0, "train", 0)
    sizes = [max(shapes._sample_box_size(rng, "ellipse", 160, 16.0, 0.5)) for _ in range(500)]
    assert min(sizes) >= 16.0 and max(sizes) <= 80.0
    rendered = [render_image(image_rng(0, "train", i), image_size=64, max_objects=4, min_long_side=16.0,
                             max_long_side=0.5) for i in range(20)]
    long_sides = np.concatenate([r.boxes_xywh[:, 2:].max(axis=1) for r in rendered])
    assert np.median(long_sides) >= 16 and long_sides.max() <= 33
    with pytest.raises(ValueError, match="min_long_side"):
        generate_shapes(tmp_path, **{**TINY_PARAMS, "min_long_side": 90.0, "max_long_side": 0.5})


def test_the_selection_split_is_its_own_set_of_num_val_images(tmp_path: Path) -> None:
    """select: generated on demand beside the set, num_val images of its own random streams (none equal to a val or
    train image), the same files each time; data.shapes.val_split: select makes validation read it."""
    from yolo_loss.config.load import config_from_dict
    from yolo_loss.data import build_dataset

    folder = generate_shapes(tmp_path, **TINY_PARAMS)
    select = generate_shapes(tmp_path, **TINY_PARAMS, select=True)
    assert select.name == f"{folder.name}-select" and not (folder / "images" / "select").exists()
    selected = read_files(select)
    assert sorted(name for name in selected if name.endswith(".jpg")) == [f"images/select/{i:06d}.jpg"
                                                                           for i in range(3)]
    others = {content for name, content in read_files(folder).items() if name.endswith(".jpg")}
    assert not others & {content for name, content in selected.items() if name.endswith(".jpg")}
    assert read_files(generate_shapes(tmp_path / "again", **TINY_PARAMS, select=True)) == selected

    data = {"format": "shapes", "root": str(tmp_path), "img_size": IMAGE_SIZE,
            "shapes": {**{k: v for k, v in TINY_PARAMS.items()}, "image_size": IMAGE_SIZE}}
    for val_split, expected in (("val", folder / "images" / "val"), ("select", select / "images" / "select")):
        cfg = config_from_dict({"data": {**data, "shapes": {**data["shapes"], "val_split": val_split}}})
        dataset = build_dataset(cfg.data, "val", train=False)
        assert len(dataset.records) == 3
        assert {Path(record.path).parent for record in dataset.records} == {expected}
    train = build_dataset(config_from_dict({"data": {**data, "shapes": {**data["shapes"], "val_split": "select"}}})
                          .data, "train", train=False)
    assert {Path(record.path).parent for record in train.records} == {folder / "images" / "train"}
