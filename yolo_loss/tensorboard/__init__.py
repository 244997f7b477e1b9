"""What a run shows in TensorBoard: the tag names and their descriptions with the Custom Scalars layout
(``tags.py``), the writer the training loop calls (``log.py``: :class:`~yolo_loss.tensorboard.log.RunLogger`) and
the image panels (``images.py``). It reads the config, the head, the loss's result and the evaluator; the trainer
imports it, nothing below the trainer does."""
