"""The YOLOv3 loss: pure components, target assignment, and the criterion that assembles them."""

from yolo_loss.losses.assign import LevelTargets, assign_targets
from yolo_loss.losses.criterion import LossResult, YoloCriterion, build_criterion

__all__ = ["LevelTargets", "LossResult", "YoloCriterion", "assign_targets", "build_criterion"]
