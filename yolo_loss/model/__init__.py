"""The YOLOv3 model: Darknet-53 backbone, darknet's neck and head, and the config-to-model translation."""

from yolo_loss.model.darknet import ConvBNAct, Darknet53, Residual
from yolo_loss.model.yolov3 import STRIDES, YOLOv3, build_model

__all__ = ["STRIDES", "ConvBNAct", "Darknet53", "Residual", "YOLOv3", "build_model"]
