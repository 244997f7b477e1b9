"""Evaluation: raw head maps to detections (``postprocess.py``: decode, darknet's NMS) and detections to COCO and
VOC metrics (``metrics.py``: :class:`~yolo_loss.eval.metrics.Evaluator`). It imports the shared leaves (boxes,
head) only: no training, no data loading, no logging."""
