"""darknet compatibility: the .cfg importer and the .weights reader and writer.

The cfg and the weights files here are written by the tests from the format descriptions (darknet's
``src/parser.c`` and the layer stack of ``yolov3-voc.cfg``), not by the project's own writer.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from yolo_loss.config.load import load_config
from yolo_loss.darknet.cfg import DarknetCfgError, import_cfg, parse_cfg
from yolo_loss.darknet.weights import (DarknetWeightsError, darknet_layers, load_darknet_weights,
                                       save_darknet_weights)
from yolo_loss.model import YOLOv3

REPO = Path(__file__).resolve().parents[2]

VOC_NET = """[net]
# Testing
# batch=1
# subdivisions=1
# Training
batch=64
subdivisions=16
width=416
height=416
channels=3
momentum=0.9
decay=0.0005
angle=0
saturation = 1.5
exposure = 1.5
hue=.1

learning_rate=0.001
burn_in=1000
max_batches = 50200
policy=steps
steps=40000,45000
scales=.1,.1
"""

VOC_YOLO = """[yolo]
mask = {mask}
anchors = 10,13,  16,30,  33,23,  30,61,  62,45,  59,119,  116,90,  156,198,  373,326
classes=20
num=9
jitter=.3
ignore_thresh = .5
truth_thresh = 1
random=1
"""


def conv(filters: int, size: int, stride: int = 1, *, linear: bool = False) -> str:
    if linear:
        return f"[convolutional]\nsize={size}\nstride={stride}\npad=1\nfilters={filters}\nactivation=linear\n"
    return (f"[convolutional]\nbatch_normalize=1\nfilters={filters}\nsize={size}\nstride={stride}\npad=1\n"
            "activation=leaky\n")


def yolov3_layers(classes: int = 20, yolo: str = VOC_YOLO) -> str:
    """YOLOv3's layer stack as yolov3.cfg lays it out: Darknet-53 (layers 0-74), then the three heads."""
    out = [conv(32, 3)]
    for filters, blocks in ((64, 1), (128, 2), (256, 8), (512, 8), (1024, 4)):
        out.append(conv(filters, 3, 2))
        for _ in range(blocks):
            out += [conv(filters // 2, 1), conv(filters, 3), "[shortcut]\nfrom=-3\nactivation=linear\n"]
    head = 3 * (classes + 5)
    for channels, mask, route in ((512, "6,7,8", None), (256, "3,4,5", 61), (128, "0,1,2", 36)):
        if route is not None:
            out += ["[route]\nlayers = -4\n", conv(channels, 1), "[upsample]\nstride=2\n",
                    f"[route]\nlayers = -1, {route}\n"]
        out += [conv(channels, 1), conv(2 * channels, 3)] * 3
        out += [conv(head, 1, linear=True), yolo.format(mask=mask)]
    return "\n".join(out)


def voc_cfg() -> str:
    return VOC_NET + "\n" + yolov3_layers()


# --------------------------------------------------------------------------------------------------------------------
# The cfg importer


def test_import_yolov3_voc_cfg():
    result = import_cfg(parse_cfg(voc_cfg()), train_images=16551)
    assert result.classes == 20
    assert result.config == {
        "model": {"width": 1.0, "depth": 1.0,
                  "anchors": [[10, 13], [16, 30], [33, 23], [30, 61], [62, 45], [59, 119],
                              [116, 90], [156, 198], [373, 326]],
                  "anchors_img_size": 0},
        "data": {"img_size": 416,
                 "augment": {"flip": 0.5, "hsv_h": 0.1, "hsv_s": 0.5, "hsv_v": 0.5, "jitter": 0.3,
                             "multiscale": [320, 352, 384, 416, 448, 480, 512, 544, 576, 608]}},
        "loss": {"ignore_thresh": 0.5},
        # 50200 batches of 64 over 16551 images: 194.1 epochs, rounded up; max_steps stops at 50200 exactly.
        "train": {"batch_size": 64, "lr": 0.001, "momentum": 0.9, "weight_decay": 0.0005, "burn_in": 1000,
                  "schedule": "step", "steps": [round(40000 / 50200, 6), round(45000 / 50200, 6)],
                  "step_scale": 0.1, "epochs": 195, "max_steps": 50200, "ema": False, "grad_clip": 0.0},
    }
    assert result.notes == ["[net] subdivisions=16: splits each batch to fit memory; the gradient is the same"]


def test_imported_cfg_loads_as_a_config(tmp_path):
    """The YAML the script writes is a valid config of this project, with the values of the cfg."""
    text = import_cfg(parse_cfg(voc_cfg()), train_images=16551).to_yaml("yolov3-voc.cfg")
    path = tmp_path / "imported.yaml"
    path.write_text(text)
    cfg = load_config(path)
    assert cfg.loss.ignore_thresh == 0.5 and cfg.loss.xy == "bce" and cfg.loss.box_scale == "two_minus_wh"
    assert cfg.train.steps == [0.796813, 0.896414] and cfg.train.max_steps == 50200
    assert cfg.model.anchors[8] == [373, 326] and cfg.data.augment.multiscale[-1] == 608


def test_voc_recipe_matches_the_imported_cfg():
    """configs/recipes/voc0712_darknet.yaml holds what the importer makes of yolov3-voc.cfg."""
    imported = import_cfg(parse_cfg(voc_cfg()), train_images=16551).config
    recipe = load_config(REPO / "configs/recipes/voc0712_darknet.yaml")
    for section, values in imported.items():
        for key, value in values.items():
            if isinstance(value, dict):
                for sub_key, sub_value in value.items():
                    assert getattr(getattr(getattr(recipe, section), key), sub_key) == sub_value, (key, sub_key)
            else:
                assert getattr(getattr(recipe, section), key) == value, (section, key)


def test_import_lists_what_it_does_not_translate():
    cfg = (VOC_NET.replace("batch=64", "batch=1").replace("angle=0", "angle=7\nmosaic=1")
           .replace("scales=.1,.1", "scales=.1,.5")
           + "\n" + yolov3_layers(yolo=VOC_YOLO.replace("random=1", "random=0\nscale_x_y=1.05")
                                                .replace("truth_thresh = 1", "truth_thresh = 0.9")))
    result = import_cfg(parse_cfg(cfg), train_images=16551)
    notes = "\n".join(result.notes)
    for expected in ("batch=1 is darknet's testing setting", "angle=7: rotation", "[net] mosaic=1: not supported",
                     "scales=.1,.5: one scale", "scale_x_y=1.05: not supported", "truth_thresh=0.9"):
        assert expected in notes
    assert result.config["data"]["augment"]["multiscale"] == []


@pytest.mark.parametrize("change, message", [
    (lambda c: c.replace("[net]", "[foo]", 1), "starts with a [net]"),
    (lambda c: c.replace("[upsample]\nstride=2\n", "", 1), "not YOLOv3's layer stack"),
    (lambda c: c.replace("height=416", "height=320"), "square"),
    (lambda c: c.replace("mask = 6,7,8", "mask = 0,1,2", 1), "masks 6,7,8 then 3,4,5"),
    (lambda c: c.replace("filters=75", "filters=255", 1), "filters=255; 3 anchors x (20 classes + 5) = 75"),
    (lambda c: c.replace("learning_rate=0.001", "learning_rate=fast"), "learning_rate='fast' is not a number"),
    (lambda c: c.replace("steps=40000,45000", "steps=40000"), "as many scales as steps"),
    (lambda c: c.replace("batch=64", "batch 64"), ":6: expected 'key=value'"),
])
def test_import_refuses_what_it_cannot_build(change, message):
    with pytest.raises(DarknetCfgError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("+", r"\+")):
        import_cfg(parse_cfg(change(voc_cfg())), train_images=16551)


def test_import_needs_the_training_set_size_for_max_batches():
    with pytest.raises(DarknetCfgError, match="max_batches=50200 needs the number of training images"):
        import_cfg(parse_cfg(voc_cfg()))


def test_cfg_layer_stack_is_the_model_layer_order():
    """The convolutions of yolov3-voc.cfg, in file order, have the shapes of the model's darknet_layers: the
    order a .weights file is read in."""
    cfg_convs = [s for s in parse_cfg(voc_cfg()) if s.name == "convolutional"]
    layers = darknet_layers(YOLOv3(20, width=1.0, depth=1.0))
    assert len(cfg_convs) == len(layers) == 75
    for section, layer in zip(cfg_convs, layers):
        assert layer.conv.out_channels == int(section.options["filters"]), layer.name
        assert layer.conv.kernel_size == (int(section.options["size"]),) * 2, layer.name
        assert layer.conv.stride == (int(section.options["stride"]),) * 2, layer.name
        assert (layer.bn is not None) == (section.options.get("batch_normalize") == "1"), layer.name


# --------------------------------------------------------------------------------------------------------------------
# The .weights reader and writer

def tiny_model() -> YOLOv3:
    torch.manual_seed(0)
    return YOLOv3(3, width=0.125, depth=0.33)


def darknet_order_names(blocks_per_stage) -> list[str]:
    """The model's convolutions in yolov3.cfg order, written out from the cfg layout (not from the model)."""
    names = ["backbone.stem"]
    for stage, blocks in enumerate(blocks_per_stage):
        names.append(f"backbone.stages.{stage}.0")
        for block in range(1, blocks + 1):
            names += [f"backbone.stages.{stage}.{block}.reduce", f"backbone.stages.{stage}.{block}.expand"]
    for level, lateral in (("p5", "lateral_p5"), ("p4", "lateral_p4"), ("p3", None)):
        names += [f"block_{level}.{k}" for k in range(5)]
        names += [f"output_{level}.conv", f"output_{level}.pred"]
        if lateral:
            names.append(lateral)
    return names


def write_by_hand(path: Path, model: YOLOv3, *, version=(0, 2, 0), seen=123456789012, stop_after=None) -> dict:
    """A .weights file in which every float of convolution i is ``i + k / 10`` for its k-th array (and the kernel
    counts up by 1e-6): returns the expected tensors by module name."""
    modules = dict(model.named_modules())
    expected = {}
    header = struct.pack("<3i", *version) + (struct.pack("<Q", seen) if version[0] * 10 + version[1] >= 2
                                             else struct.pack("<I", seen))
    chunks = [header]
    names = darknet_order_names(model.backbone.blocks_per_stage)
    for index, name in enumerate(names[:stop_after]):
        module = modules[name]
        conv = module.conv if hasattr(module, "bn") else module
        n = conv.out_channels
        kernel = (index + 0.5 + 1e-6 * np.arange(conv.weight.numel(), dtype=np.float64)).astype("<f4")
        if hasattr(module, "bn"):  # darknet: biases (BN shift), scales, rolling mean, rolling variance, weights
            arrays = {"bn.bias": index + 0.1, "bn.weight": index + 0.2, "bn.running_mean": index + 0.3,
                      "bn.running_var": index + 0.4}
        else:  # a linear output convolution: biases, weights
            arrays = {"bias": index + 0.1}
        for key, value in arrays.items():
            values = np.full(n, value, dtype="<f4")
            chunks.append(values.tobytes())
            expected[f"{name}.{key}"] = torch.from_numpy(values.astype(np.float32))
        chunks.append(kernel.tobytes())
        expected[f"{name}.conv.weight" if hasattr(module, "bn") else f"{name}.weight"] = (
            torch.from_numpy(kernel.astype(np.float32)).view(conv.weight.shape))
    path.write_bytes(b"".join(chunks))
    return expected


@pytest.mark.parametrize("version", [(0, 2, 0), (0, 1, 0)], ids=["uint64-seen", "uint32-seen"])
def test_hand_written_file_lands_in_the_right_layers(tmp_path, version):
    model = tiny_model()
    expected = write_by_hand(tmp_path / "tiny.weights", model, version=version, seen=4000000)
    report = load_darknet_weights(model, tmp_path / "tiny.weights")
    assert (report.layers_loaded, report.layers_total, report.version, report.images_seen) == (
        47, 47, version, 4000000)  # depth 0.33: blocks 1, 1, 3, 3, 1; 24 + 23 convolutions
    state = model.state_dict()
    assert len(expected) == sum(4 if layer.bn is not None else 1 for layer in darknet_layers(model)) + 47
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


def test_partial_file_loads_the_backbone_only(tmp_path):
    """A darknet53.conv.74-style file (the backbone's convolutions, then the end) sets the backbone and leaves
    the neck and heads as they were."""
    model = tiny_model()
    backbone_convs = 1 + sum(1 + 2 * b for b in model.backbone.blocks_per_stage)
    expected = write_by_hand(tmp_path / "backbone.weights", model, stop_after=backbone_convs)
    head_before = model.output_p3.pred.weight.clone()
    report = load_darknet_weights(model, tmp_path / "backbone.weights")
    assert report.layers_loaded == backbone_convs == 24
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in expected.items())
    assert all(k.startswith("backbone.") for k in expected)
    assert torch.equal(model.output_p3.pred.weight, head_before)


def test_full_size_files_have_darknets_sizes():
    """The published files: yolov3.weights is 248,007,048 bytes and darknet53.conv.74 162,482,580 (20-byte header,
    then float32s), so the model at width and depth 1 reads exactly that many floats, in 75 and 52 convolutions."""
    layers = darknet_layers(YOLOv3(80, width=1.0, depth=1.0))
    assert 20 + 4 * sum(layer.numel for layer in layers) == 248_007_048
    assert 20 + 4 * sum(layer.numel for layer in layers[:52]) == 162_482_580


def test_round_trip_is_bit_identical(tmp_path):
    model = tiny_model()
    for module in model.modules():  # non-trivial running statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
    assert save_darknet_weights(model, tmp_path / "a.weights", images_seen=640) == 47
    other = YOLOv3(3, width=0.125, depth=0.33)
    report = load_darknet_weights(other, tmp_path / "a.weights")
    assert report.images_seen == 640 and report.layers_loaded == 47
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        if not name.endswith("num_batches_tracked"):
            assert torch.equal(a, b), name
    # Writing the backbone only gives a partial file of exactly the backbone's size.
    save_darknet_weights(model, tmp_path / "b.weights", max_layers=24)
    assert load_darknet_weights(YOLOv3(3, width=0.125, depth=0.33), tmp_path / "b.weights").layers_loaded == 24


def test_max_layers_reads_part_of_a_longer_file(tmp_path):
    """pretrained_layers: the backbone of a file trained on other classes (whose heads do not fit)."""
    save_darknet_weights(YOLOv3(80, width=0.125, depth=0.33), tmp_path / "80.weights")
    model = YOLOv3(20, width=0.125, depth=0.33)
    with pytest.raises(DarknetWeightsError, match="longer than the model"):
        load_darknet_weights(model, tmp_path / "80.weights")
    assert load_darknet_weights(model, tmp_path / "80.weights", max_layers=24).layers_loaded == 24


@pytest.mark.parametrize("cut, message", [
    (-4, "ends inside convolution 46 \\(output_p3.pred\\)"),
    (-2, "2 bytes after its last whole float"),
    (+8, "longer than the model"),
])
def test_wrong_sized_file_is_refused_with_the_counts(tmp_path, cut, message):
    model = tiny_model()
    save_darknet_weights(model, tmp_path / "a.weights")
    data = (tmp_path / "a.weights").read_bytes()
    (tmp_path / "b.weights").write_bytes(data[:cut] if cut < 0 else data + bytes(cut))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    need = sum(layer.numel for layer in darknet_layers(model))
    with pytest.raises(DarknetWeightsError, match=message) as info:
        load_darknet_weights(model, tmp_path / "b.weights")
    assert f"need {need}" in str(info.value) and "b.weights" in str(info.value)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DarknetWeightsError, match="does not exist"):
        load_darknet_weights(tiny_model(), tmp_path / "none.weights")
    (tmp_path / "h.weights").write_bytes(struct.pack("<3iQ", 0, 2, 0, 0))
    with pytest.raises(DarknetWeightsError, match="header and no weights"):
        load_darknet_weights(tiny_model(), tmp_path / "h.weights")
    (tmp_path / "s.weights").write_bytes(b"\0" * 7)
    with pytest.raises(DarknetWeightsError, match="too short for a darknet header"):
        load_darknet_weights(tiny_model(), tmp_path / "s.weights")


def test_import_script(tmp_path):
    """scripts/import_darknet_cfg.py: YAML on stdout, the notes on stderr; a cfg it cannot read exits 2."""
    import subprocess
    import sys

    cfg = tmp_path / "yolov3-voc.cfg"
    cfg.write_text(voc_cfg())
    script = str(REPO / "scripts" / "import_darknet_cfg.py")
    done = subprocess.run([sys.executable, script, str(cfg), "--train-images", "16551"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "not imported: [net] subdivisions=16" in done.stderr
    (tmp_path / "out.yaml").write_text(done.stdout)
    assert load_config(tmp_path / "out.yaml").train.max_steps == 50200
    done = subprocess.run([sys.executable, script, str(cfg)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "needs the number of training images" in done.stderr
    assert "Traceback" not in done.stderr
