"""Rebuild a study's results.csv, results.md, metrics.png and forest.png from its run folders alone.

    python scripts/report.py docs/ablations/box_losses          # the study folder
    python scripts/report.py configs/ablations/box_losses.yaml  # the study file: study.json rewritten from it first

Given the study file, its study.json (the expansion the report reads: variants, baseline, seeds, min_effect,
labels) is rewritten from the file first, so a label or min_effect added later reaches the report without
training anything.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from yolo_loss.studies.study import StudyError, load_study
from yolo_loss.studies.runner import write_study_info
from yolo_loss.studies.report import ReportError, write_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", type=Path, help="the study folder (the 'out' of its study file), or the study file")
    args = parser.parse_args()
    study_dir = args.study
    try:
        if args.study.suffix in (".yaml", ".yml"):
            study = load_study(args.study, check_configs=False)
            write_study_info(study)
            study_dir = study.out
        if not (study_dir / "study.json").is_file():
            print(f"error: {study_dir} has no study.json: not a study folder", file=sys.stderr)
            raise SystemExit(2)
        written = write_report(study_dir)
    except (StudyError, ReportError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    for path in written:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
