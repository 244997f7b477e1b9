"""Set the published claims of docs/claims.yaml against the committed studies: docs/findings.md.

    python scripts/findings.py                       # docs/claims.yaml + docs/ablations/*/results.csv
    python scripts/findings.py --claims C --studies DIR --out F

Each claim names a study folder (under --studies), the variant it is about and the variant it is compared with;
the paired difference, its MDE and the verdict come from that study's results.csv (yolo_loss/findings.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from yolo_loss.findings import ClaimsError, evaluate_claims, findings_markdown, load_claims  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--claims", type=Path, default=REPO / "docs" / "claims.yaml")
    parser.add_argument("--studies", type=Path, default=REPO / "docs" / "ablations",
                        help="the folder holding one folder per study, each with its results.csv")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "findings.md")
    args = parser.parse_args()
    try:
        claims, meta = load_claims(args.claims)
    except ClaimsError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    findings = evaluate_claims(claims, args.studies)
    args.out.write_text(findings_markdown(findings, meta))
    for finding in findings:
        print(f"{finding.claim.study}: {finding.claim.variant} vs {finding.claim.reference}: {finding.verdict}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
