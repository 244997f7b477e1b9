"""Configuration: what a run may be told, and how config files become one typed, checked :class:`Config`.

``schema.py`` owns the dataclasses (every key, its default and bounds, the rules between keys); ``load.py`` reads
YAML with ``_base_`` inheritance and ``--set`` overrides into them and gives each config its hash. It imports the
shared leaves (``decode.py``) and the loss component registry's declarations; it imports nothing that trains,
evaluates or logs. Import from the modules: ``from yolo_loss.config.load import load_config``.
"""
