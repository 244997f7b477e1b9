"""The YOLOv3 loss: pure components (``components.py``, with the IoU family in ``yolo_loss/boxes.py``), bound to
their declarations in ``yolo_loss/config/components.py`` by ``registry.py``; target assignment (``assign.py``, and the
dynamic assigners in ``assigners/``) and the criterion that assembles them (``criterion.py``). It imports the shared
leaves and the config's declarations, never the model, the data or the trainer. Import from the modules:
``from yolo_loss.losses.criterion import build_criterion``."""
