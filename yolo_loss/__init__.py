"""yolo-loss: a compact YOLOv3 whose loss is assembled from pluggable parts, with darknet and paper presets."""

__version__ = "0.1.0"
