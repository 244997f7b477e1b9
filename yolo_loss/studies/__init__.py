"""Ablation studies: study files to runs and runs to verdicts.

``study.py`` (a study file parsed and expanded into runs: axes, seeds and automatic seeds, reuse, tuning; a run's
state read from its folder), ``runner.py`` (the runs launched, resumed and shared across launchers, here or as
cluster jobs, the next round of automatic seeds), ``run_locks.py`` (a launcher's claim on a run), ``report.py`` (a
study folder's results.md, results.csv and plots), ``stats.py`` (the paired statistics and the verdict words, on scipy) and ``findings.py``
(docs/claims.yaml judged against the studies). It reads run folders only through
:mod:`yolo_loss.train.run_folder` and launches ``train.py`` as a process: it never imports the trainer.
"""
