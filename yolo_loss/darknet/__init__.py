"""darknet's files: ``.cfg`` training settings into this project's config (``cfg.py``) and ``.weights`` into and out
of the model (``weights.py``). It imports the model and the checkpoint writer only."""
