"""The YOLOv3 loss: pure components (``components.py``, with the IoU family in ``yolo_loss/boxes.py``), their one
registry (``registry.py``), target assignment (``assign.py``) and the criterion that assembles them
(``criterion.py``). Import from the modules: ``from yolo_loss.losses.criterion import build_criterion``."""
