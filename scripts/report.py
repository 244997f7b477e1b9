"""Rebuild a study's results.csv, results.md, metrics.png and loss_curves.png from its run folders alone.

    python scripts/report.py runs/ablations/loss_axes
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from yolo_loss.study_report import write_report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study_dir", type=Path, help="the study folder (the 'out' of its study file)")
    args = parser.parse_args()
    if not (args.study_dir / "study.json").is_file():
        print(f"error: {args.study_dir} has no study.json: not a study folder", file=sys.stderr)
        raise SystemExit(2)
    for path in write_report(args.study_dir):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
