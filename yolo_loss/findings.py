"""Findings: published claims about the loss set against this project's studies.

A claims file (``docs/claims.yaml``) lists, for each claim, its source, the claim in words, the published numbers,
the study that tests it, the variant the claim is about and the variant it is compared with, the metric, and the
direction the source reports (``better``, ``worse``, or ``same`` for a claim of no difference). From the studies'
``results.csv`` each claim gets the paired difference ``variant - reference`` over the seeds both finished
(:mod:`yolo_loss.study_report`: mean +- standard error, n, the MDE at 95%) and a verdict by the Student-t rule:

- ``reproduced (direction), resolved``: the 95% t-interval excludes 0 and the sign is the source's;
- ``contradicted, resolved``: it excludes 0 with the other sign (or, for a ``same`` claim, at all);
- ``consistent: no difference resolved at MDE x`` for a ``same`` claim whose interval contains 0;
- ``unresolved at MDE x``: the interval contains 0, so a difference smaller than x cannot be told from noise;
- ``not run`` when fewer than two paired seeds finished.
"""

from __future__ import annotations

import csv
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from yolo_loss.stats import Difference, minimum_detectable_effect

DIRECTIONS = ("better", "worse", "same")
CLAIM_KEYS = {"source", "claim", "published", "study", "variant", "reference", "metric", "direction"}


class ClaimsError(ValueError):
    """A claims file that cannot be used; the message names the file and the claim."""


@dataclass(frozen=True)
class Claim:
    source: str
    claim: str
    published: str
    study: str
    variant: str
    reference: str
    metric: str
    direction: str


@dataclass(frozen=True)
class Finding:
    claim: Claim
    difference: Difference

    @property
    def verdict(self) -> str:
        d = self.difference
        if d.n < 2 or math.isnan(d.se):
            return "not run" if d.n == 0 else f"not resolvable with {d.n} seed"
        mde = minimum_detectable_effect(d.sd, d.n)
        resolved = not d.within_noise
        if self.claim.direction == "same":
            return "contradicted, resolved" if resolved else f"consistent: no difference resolved at MDE {mde:.3f}"
        if not resolved:
            return f"unresolved at MDE {mde:.3f}"
        agrees = (d.mean > 0) == (self.claim.direction == "better")
        return "reproduced (direction), resolved" if agrees else "contradicted, resolved"


def load_claims(path: Path) -> tuple[list[Claim], dict[str, Any]]:
    """The claims of a claims file and its other top-level keys (``title``, ``intro``, ``limits``).

    Raises:
        ClaimsError: not a mapping with a ``claims`` list, a claim with missing or unknown keys, or a direction
            that is not one of :data:`DIRECTIONS`.
    """
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ClaimsError(f"{path}: cannot read the claims file: {error}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("claims"), list):
        raise ClaimsError(f"{path}: expected a mapping with a 'claims' list")
    claims = []
    for index, item in enumerate(raw["claims"]):
        keys = set(item) if isinstance(item, dict) else set()
        if keys != CLAIM_KEYS:
            raise ClaimsError(f"{path}: claims.{index}: expected the keys {', '.join(sorted(CLAIM_KEYS))}; "
                              f"missing {sorted(CLAIM_KEYS - keys)}, unknown {sorted(keys - CLAIM_KEYS)}")
        if item["direction"] not in DIRECTIONS:
            raise ClaimsError(f"{path}: claims.{index}.direction: {item['direction']!r} is not one of "
                              f"{', '.join(DIRECTIONS)}")
        claims.append(Claim(**{key: str(value) for key, value in item.items()}))
    return claims, {key: value for key, value in raw.items() if key != "claims"}


def study_rows(results_csv: Path) -> dict[tuple[str, int], dict[str, str]]:
    """``{(variant, seed): row}`` of the finished runs of a study's ``results.csv``."""
    with Path(results_csv).open(newline="") as stream:
        return {(row["variant"], int(row["seed"])): row for row in csv.DictReader(stream)
                if row["status"] == "finished"}


def paired_difference(rows: dict[tuple[str, int], dict[str, str]], variant: str, reference: str,
                      metric: str) -> Difference:
    """``variant - reference`` in ``metric``, paired by seed over the seeds both finished."""
    def seeds_of(name: str) -> set[int]:
        return {seed for variant_name, seed in rows if variant_name == name}

    seeds = sorted(seeds_of(variant) & seeds_of(reference))
    values = [float(rows[variant, seed][metric]) - float(rows[reference, seed][metric]) for seed in seeds]
    if not values:
        return Difference(math.nan, math.nan, 0)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) >= 2 else math.nan
    return Difference(statistics.fmean(values), se, len(values), tuple(values))


def evaluate_claims(claims: list[Claim], studies_dir: Path) -> list[Finding]:
    """Each claim against ``studies_dir/<study>/results.csv`` (a missing study gives ``not run``)."""
    cache: dict[str, dict] = {}
    findings = []
    for claim in claims:
        path = Path(studies_dir) / claim.study / "results.csv"
        if claim.study not in cache:
            cache[claim.study] = study_rows(path) if path.is_file() else {}
        findings.append(Finding(claim, paired_difference(cache[claim.study], claim.variant, claim.reference,
                                                         claim.metric)))
    return findings


def findings_markdown(findings: list[Finding], meta: dict[str, Any]) -> str:
    """``docs/findings.md``: the claims file's title and introduction, one row per claim, then its limits."""
    head = "| source | claim (published) | study: variant vs reference | metric | d +- SE (n) | MDE (95%) | verdict |"
    lines = [f"# {meta.get('title', 'Findings')}", "", str(meta.get("intro", "")).strip(), "", head,
             "|---|---|---|---|---|---|---|"]
    for finding in findings:
        c, d = finding.claim, finding.difference
        measured = "-" if d.n == 0 else (f"{d.mean:+.4f}" + ("" if math.isnan(d.se) else f" +- {d.se:.4f}")
                                         + f" ({d.n})")
        mde = "-" if math.isnan(d.mde) else f"{d.mde:.4f}"
        lines.append(f"| {c.source} | {c.claim} ({c.published}) | {c.study}: `{c.variant}` vs `{c.reference}` | "
                     f"{c.metric} | {measured} | {mde} | {finding.verdict} |")
    lines += ["", "d: the difference variant - reference paired by seed (mean +- standard error, n seeds); MDE: "
              "t(0.975, n-1) sd(d) / sqrt(n); the verdict follows the 95% Student-t interval (yolo_loss/findings.py).",
              "", str(meta.get("limits", "")).strip(), ""]
    return "\n".join(lines)
