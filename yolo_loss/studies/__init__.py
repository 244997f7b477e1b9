"""Ablation studies: study files to runs and runs to verdicts.

``ablation.py`` (a study file parsed, its runs planned, launched, resumed, shared across launchers, tuned and seeded
automatically), ``run_locks.py`` (a launcher's claim on a run), ``report.py`` (a study folder's results.md,
results.csv and plots), ``stats.py`` (the paired statistics and the verdict words, on scipy) and ``findings.py``
(docs/claims.yaml judged against the studies). It reads run folders only through
:mod:`yolo_loss.train.run_folder` and launches ``train.py`` as a process: it never imports the trainer.
"""
