"""Training: the loop and everything a run needs around it.

``engine.py`` (the trainer: ``train_step``, evaluation points, resume), ``optim.py`` (optimizer and learning-rate
schedule), ``runtime.py`` (device, seeds, random-number states), ``distributed.py`` (torchrun), ``pretrain.py``
(the backbone's classification pretraining on shape crops) and ``run_folder.py`` (what a run folder holds:
``metrics.json``, ``status.json``; the one contract the studies read). It may import every package below it
(config, data, model, losses, eval, tensorboard, darknet); nothing but the entry points and the studies'
``run_folder`` reads import it.
"""
