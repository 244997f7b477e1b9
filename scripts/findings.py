"""Set the published claims of docs/claims.yaml against the committed studies: docs/findings.md.

    python scripts/findings.py                       # docs/claims.yaml + docs/ablations/*/results.csv
    python scripts/findings.py --claims C --studies DIR --out F --readme README.md

Each claim (and each of the project's questions) names a study folder (under --studies), the variant it is about
and the variant it is compared with; the paired difference, its p-values and the verdict come from the studies'
results.csv, the claims judged as one family and the questions as another (yolo_loss/studies/findings.py). An item's
`replications` judge the same comparison on another data set (e.g. BCCD's bccd_loss_axes), each data set its own
families, shown beside the first data set's verdict. Regenerate each study's results.csv first (scripts/report.py).
The items with a `headline` label also make the README's headline table (between its two marker lines).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from yolo_loss.studies.findings import (ClaimsError, evaluate_claims, evaluate_replications, findings_markdown,
                                        headline_markdown, load_claims, replace_headline)
from yolo_loss.studies.stats import DEFAULT_MIN_EFFECT

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--claims", type=Path, default=REPO / "docs" / "claims.yaml")
    parser.add_argument("--studies", type=Path, default=REPO / "docs" / "ablations",
                        help="the folder holding one folder per study, each with its results.csv")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "findings.md")
    parser.add_argument("--readme", type=Path, default=REPO / "README.md",
                        help="the file whose headline table is rewritten (its marker lines kept)")
    args = parser.parse_args()
    try:
        claims, questions, meta = load_claims(args.claims)
        min_effect = meta.get("min_effect", DEFAULT_MIN_EFFECT)
        judged_claims, judged_questions = evaluate_claims(claims, questions, args.studies, min_effect)
        replications = evaluate_replications(claims, questions, args.studies, min_effect)
        readme = replace_headline(args.readme.read_text(),
                                  headline_markdown(judged_claims + judged_questions, replications))
    except ClaimsError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    args.out.write_text(findings_markdown(judged_claims, judged_questions, meta, replications))
    args.readme.write_text(readme)
    others = [finding for pair in replications.values() for finding in (*pair[0], *pair[1])]
    for finding in judged_claims + judged_questions + others:
        c = finding.comparison
        print(f"{c.study}: {c.variant} vs {c.reference} ({c.metric}): {finding.verdict}")
    print(f"wrote {args.out} and the headline table of {args.readme}")


if __name__ == "__main__":
    main()
