"""Findings: published claims about the loss, and this project's own questions, set against its studies.

A claims file (``docs/claims.yaml``) has two lists, each judged as one family by the verdict rule of
:mod:`yolo_loss.studies.stats` (Holm over the family, equivalence within ``min_effect``, at least 5 paired seeds):

- ``claims``: what a paper reports, fixed before the results. Each names the source and the line in it
  (``where``: the table or section), the claim in words, the published numbers (``published``) and the published
  effect as a number in the metric's units (``published_effect``, e.g. -0.02 for "about 2 points of mAP lower";
  null where the paper gives none), the paper's own comparison as a ``variant`` and its ``reference`` (another
  study's variant with ``reference_study``, paired by seed across the two studies), the ``metric`` the paper
  reported, and the ``direction`` it reports (``better``, ``worse``, or ``same`` for no difference). The verdict:
  **reproduced** (better/worse in the paper's direction; equivalent for ``same``), **contradicted** (better/worse
  against it; better or worse for ``same``), **not reproduced: equivalent within +-m** (a claimed difference that is
  smaller than the margin here), **unresolved**, **preliminary** (fewer than 5 paired seeds), or **not run**. The
  ratio of the measured to the published effect is shown where the paper gives a number.
- ``replications`` (optional, on a claim or a question): the same comparison on another data set, as
  ``{<data set>: {study, variant, reference[, reference_study]}}`` in the item's metric; each data set's
  replications are a family of their own (claims and questions apart), judged by the same rule, and
  ``findings.md`` gives each beside the verdict on the first data set. The top-level ``datasets`` names each
  data set in words.
- ``questions``: comparisons this project asks of itself (the paper's loss as written against darknet's code, the
  A/A checks), worded as questions, never judged against a paper: their verdict is the statistical word itself
  (better, worse, equivalent, unresolved, preliminary).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from yolo_loss.studies.stats import DEFAULT_MIN_EFFECT, METRICS, Difference, Judged, format_p, judge_family
from yolo_loss.train.run_folder import FLOAT32

DIRECTIONS = ("better", "worse", "same")
CLAIM_KEYS = {"source", "where", "claim", "published", "published_effect", "study", "variant", "reference",
              "metric", "direction"}
QUESTION_KEYS = {"question", "study", "variant", "reference", "metric"}
OPTIONAL_KEYS = {"reference_study", "replications", "headline"}
# The README's headline table is written by scripts/findings.py between these lines (headline_markdown).
HEADLINE_START = "<!-- headline findings: written by scripts/findings.py from docs/claims.yaml; do not edit -->"
HEADLINE_END = "<!-- end of the headline findings -->"
REPLICATION_KEYS = {"study", "variant", "reference"}


class ClaimsError(ValueError):
    """A claims file that cannot be used; the message names the file and the claim."""


@dataclass(frozen=True)
class Comparison:
    """A variant of ``study`` against ``reference`` of ``reference_study`` (the same study unless named) in
    ``metric``, paired by seed."""

    study: str
    variant: str
    reference: str
    metric: str
    reference_study: str = ""

    @property
    def reference_in(self) -> str:
        return self.reference_study or self.study


@dataclass(frozen=True)
class Claim:
    source: str
    where: str
    claim: str
    published: str
    published_effect: float | None
    direction: str
    comparison: Comparison
    replications: tuple[tuple[str, Comparison], ...] = ()  # (data set, the same comparison there)
    headline: str = ""  # its row's label in the README's headline table ("": not there)


@dataclass(frozen=True)
class Question:
    question: str
    comparison: Comparison
    replications: tuple[tuple[str, Comparison], ...] = ()
    headline: str = ""


@dataclass(frozen=True)
class Finding:
    """A claim or a question with its judged comparison."""

    item: Claim | Question
    judged: Judged
    dataset: str = ""  # a replication's data set ("": the item's own comparison)
    comparison: Comparison | None = None  # the comparison judged (the item's own unless a replication)

    @property
    def verdict(self) -> str:
        j, d = self.judged, self.judged.difference
        if d.n == 0:
            return "not run"
        if isinstance(self.item, Question) or j.verdict in ("preliminary", "unresolved"):
            return j.verdict
        if self.item.direction == "same":
            return "reproduced" if j.verdict == "equivalent" else "contradicted"
        if j.verdict == "equivalent":
            return f"not reproduced: equivalent within +-{j.min_effect:g}"
        return "reproduced" if j.verdict == self.item.direction else "contradicted"

    @property
    def ratio(self) -> float:
        """The measured effect over the published one (nan where the paper gives no number)."""
        effect = self.item.published_effect if isinstance(self.item, Claim) else None
        return self.judged.difference.mean / effect if effect else math.nan


def _comparison(path: Path, where: str, item: dict[str, Any]) -> Comparison:
    if item["metric"] not in METRICS:
        raise ClaimsError(f"{path}: {where}.metric: {item['metric']!r} is not one of {', '.join(METRICS)}")
    for key in ("study", "variant", "reference"):
        if not str(item[key] or "").strip():
            raise ClaimsError(f"{path}: {where}.{key}: empty")
    return Comparison(str(item["study"]), str(item["variant"]), str(item["reference"]), str(item["metric"]),
                      str(item.get("reference_study") or ""))


def _replications(path: Path, where: str, item: dict[str, Any]) -> tuple[tuple[str, Comparison], ...]:
    raw = item.get("replications") or {}
    if not isinstance(raw, dict):
        raise ClaimsError(f"{path}: {where}.replications: expected {{<data set>: {{study, variant, reference}}}}")
    found = []
    for dataset, other in raw.items():
        here = f"{where}.replications.{dataset}"
        other = _check_keys(path, here, other, REPLICATION_KEYS, optional={"reference_study"})
        found.append((str(dataset), _comparison(path, here, {**other, "metric": item["metric"]})))
    return tuple(found)


def _check_keys(path: Path, where: str, item: Any, required: set[str],
                optional: set[str] = OPTIONAL_KEYS) -> dict[str, Any]:
    keys = set(item) if isinstance(item, dict) else set()
    if not required <= keys or keys - required - optional:
        raise ClaimsError(f"{path}: {where}: expected the keys {', '.join(sorted(required))} (and optionally "
                          f"{', '.join(sorted(optional))}); missing {sorted(required - keys)}, unknown "
                          f"{sorted(keys - required - optional)}")
    return item


def load_claims(path: Path) -> tuple[list[Claim], list[Question], dict[str, Any]]:
    """The claims and questions of a claims file and its other top-level keys (``title``, ``intro``, ``limits``,
    ``min_effect``).

    Raises:
        ClaimsError: not a mapping with a ``claims`` list; a claim without its source, the line in it, its
            published numbers, its reference, metric or direction (or with an unknown key, a metric the studies do
            not report, a direction not in :data:`DIRECTIONS`, a published effect that is not a number or null);
            a question with missing or unknown keys.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ClaimsError(f"{path}: cannot read the claims file: {error}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("claims"), list):
        raise ClaimsError(f"{path}: expected a mapping with a 'claims' list (and optionally 'questions')")
    claims = []
    for index, item in enumerate(raw["claims"]):
        where = f"claims.{index}"
        item = _check_keys(path, where, item, CLAIM_KEYS)
        for key in ("source", "where", "claim", "published"):
            if not str(item[key] or "").strip():
                raise ClaimsError(f"{path}: {where}.{key}: empty: a claim names its source, the line in it, and "
                                  "what it published")
        if item["direction"] not in DIRECTIONS:
            raise ClaimsError(f"{path}: {where}.direction: {item['direction']!r} is not one of "
                              f"{', '.join(DIRECTIONS)}")
        effect = item["published_effect"]
        if effect is not None and (isinstance(effect, bool) or not isinstance(effect, (int, float))):
            raise ClaimsError(f"{path}: {where}.published_effect: expected a number in the metric's units (e.g. "
                              f"-0.02 for 2 points lower) or null, got {effect!r}")
        claims.append(Claim(str(item["source"]), str(item["where"]), str(item["claim"]), str(item["published"]),
                            None if effect is None else float(effect), str(item["direction"]),
                            _comparison(path, where, item), _replications(path, where, item),
                            str(item.get("headline") or "")))
    questions = []
    for index, item in enumerate(raw.get("questions") or []):
        where = f"questions.{index}"
        item = _check_keys(path, where, item, QUESTION_KEYS)
        if not str(item["question"]).strip().endswith("?"):
            raise ClaimsError(f"{path}: {where}.question: word it as a question (ending in '?'), not as a claim")
        questions.append(Question(str(item["question"]), _comparison(path, where, item),
                                  _replications(path, where, item), str(item.get("headline") or "")))
    meta = {key: value for key, value in raw.items() if key not in ("claims", "questions")}
    return claims, questions, meta


def study_rows(results_csv: Path) -> dict[tuple[str, int], dict[str, str]]:
    """``{(variant, seed): row}`` of the finished runs of a study's ``results.csv``."""
    with Path(results_csv).open(newline="") as stream:
        return {(row["variant"], int(row["seed"])): row for row in csv.DictReader(stream)
                if row["status"] == "finished"}


def paired_difference(rows: dict[tuple[str, int], dict[str, str]], variant: str, reference: str, metric: str,
                      reference_rows: dict[tuple[str, int], dict[str, str]] | None = None) -> Difference:
    """``variant - reference`` in ``metric``, paired by seed over the seeds both finished (the reference's runs
    from ``reference_rows`` when it is another study's).

    Raises:
        ClaimsError: a pair of runs trained at different precisions.
    """
    reference_rows = rows if reference_rows is None else reference_rows
    mine = {seed: row for (name, seed), row in rows.items() if name == variant}
    theirs = {seed: row for (name, seed), row in reference_rows.items() if name == reference}
    seeds = sorted(set(mine) & set(theirs))
    for seed in seeds:
        ours, other = mine[seed].get("precision") or FLOAT32, theirs[seed].get("precision") or FLOAT32
        if ours != other:
            raise ClaimsError(f"{variant} vs {reference}, seed {seed}: {ours} against {other}: runs of different "
                              "precisions are not paired")
    return Difference.of([float(mine[seed][metric]) - float(theirs[seed][metric]) for seed in seeds])


def evaluate(items: list[Claim] | list[Question], studies_dir: Path, min_effect: float,
             dataset: str = "") -> list[Finding]:
    """Each claim or question against ``studies_dir/<study>/results.csv`` (a missing study gives ``not run``),
    judged as one family; with ``dataset``, the items' replications on that data set instead (the items without
    one left out)."""
    cache: dict[str, dict] = {}

    def rows_of(study: str) -> dict:
        if study not in cache:
            path = Path(studies_dir) / study / "results.csv"
            cache[study] = study_rows(path) if path.is_file() else {}
        return cache[study]

    if dataset:
        items = [item for item in items if dataset in dict(item.replications)]
    comparisons = [dict(item.replications)[dataset] if dataset else item.comparison for item in items]
    differences = [paired_difference(rows_of(c.study), c.variant, c.reference, c.metric, rows_of(c.reference_in))
                   for c in comparisons]
    return [Finding(item, judged, dataset, comparison)
            for item, judged, comparison in zip(items, judge_family(differences, min_effect), comparisons)]


def replication_datasets(items: list[Claim] | list[Question]) -> list[str]:
    """The data sets the items are replicated on, in the order they first appear."""
    return list(dict.fromkeys(dataset for item in items for dataset, _ in item.replications))


def evaluate_claims(claims: list[Claim], questions: list[Question], studies_dir: Path,
                    min_effect: float = DEFAULT_MIN_EFFECT) -> tuple[list[Finding], list[Finding]]:
    """The claims and the questions, each list judged as its own family."""
    return evaluate(claims, studies_dir, min_effect), evaluate(questions, studies_dir, min_effect)


def _measured(judged: Judged) -> str:
    d = judged.difference
    if d.n == 0:
        return "-"
    return f"{d.mean:+.4f}" + ("" if math.isnan(d.se) else f" +- {d.se:.4f}") + f" ({d.n})"


def _stats_cells(judged: Judged) -> str:
    mde = judged.difference.mde
    return (f"{format_p(judged.p)} | {format_p(judged.p_holm)} | {format_p(judged.q_bh)} | "
            f"{'-' if math.isnan(mde) else f'{mde:.4f}'}")


def _where(comparison: Comparison) -> str:
    reference = (f"{comparison.reference_study}: `{comparison.reference}`" if comparison.reference_study
                 else f"`{comparison.reference}`")
    return f"{comparison.study}: `{comparison.variant}` vs {reference}"


def evaluate_replications(claims: list[Claim], questions: list[Question], studies_dir: Path,
                          min_effect: float = DEFAULT_MIN_EFFECT) -> dict[str, tuple[list[Finding], list[Finding]]]:
    """``{data set: (its claims, its questions)}``, each list judged as its own family on that data set."""
    return {dataset: (evaluate(claims, studies_dir, min_effect, dataset),
                      evaluate(questions, studies_dir, min_effect, dataset))
            for dataset in replication_datasets([*claims, *questions])}


def replications_markdown(first: list[Finding], replications: dict[str, tuple[list[Finding], list[Finding]]],
                          meta: dict[str, Any]) -> list[str]:
    """One section per data set: each replicated claim and question, its comparison there, the statistics and
    the verdict there beside the verdict on the first data set (``first``: the claims' and questions' findings)."""
    first_verdict = {id(finding.item): finding.verdict for finding in first}
    names = meta.get("datasets") or {}
    lines = []
    for dataset, (claims, questions) in replications.items():
        lines += ["", f"## On {names.get(dataset, dataset)}", "",
                  f"The same comparisons on `{dataset}`, the claims one family and the questions another; the last "
                  "column is the verdict on the first data set (the tables above).", "",
                  "| claim or question | study: variant vs reference | metric | d +- SE (n) | p | Holm p | BH q | "
                  f"MDE | verdict on {dataset} | verdict above |", "|---|---|---|---|---|---|---|---|---|---|"]
        for finding in [*claims, *questions]:
            item = finding.item
            said = f"{item.source}: {item.claim}" if isinstance(item, Claim) else item.question
            lines.append(f"| {said} | {_where(finding.comparison)} | {finding.comparison.metric} | "
                         f"{_measured(finding.judged)} | {_stats_cells(finding.judged)} | {finding.verdict} | "
                         f"{first_verdict.get(id(item), '-')} |")
    return lines


def headline_markdown(first: list[Finding], replications: dict[str, tuple[list[Finding], list[Finding]]]) -> str:
    """The README's headline table: the claims and questions with a ``headline`` label, in the claims file's order
    (claims, then questions), each with its study, d +- SE (n), the verdict in its family, and the same on each
    replication's data set; between :data:`HEADLINE_START` and :data:`HEADLINE_END`."""
    names = list(replications)
    elsewhere = {(dataset, id(f.item)): f for dataset, pair in replications.items() for f in (*pair[0], *pair[1])}
    header = "| comparison | study | metric | d +- SE (n) | verdict |" + "".join(f" on {n}: d +- SE (n), verdict |"
                                                                              for n in names)
    lines = [HEADLINE_START, header, "|---" * (5 + len(names)) + "|"]
    for finding in first:
        if not finding.item.headline:
            continue
        cells = [finding.item.headline, f"`{finding.comparison.study}`", finding.comparison.metric,
                 _measured(finding.judged), finding.verdict]
        for dataset in names:
            other = elsewhere.get((dataset, id(finding.item)))
            cells.append(f"{_measured(other.judged)}, {other.verdict}" if other else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + [HEADLINE_END])


def replace_headline(text: str, table: str) -> str:
    """``text`` (the README) with the block between the headline markers replaced by ``table``.

    Raises:
        ClaimsError: the markers are missing or out of order.
    """
    start, end = text.find(HEADLINE_START), text.find(HEADLINE_END)
    if start < 0 or end < start:
        raise ClaimsError(f"the README has no headline block: put the lines {HEADLINE_START!r} and "
                          f"{HEADLINE_END!r} where the table goes")
    return text[:start] + table + text[end + len(HEADLINE_END):]


def _family_size(findings: list[Finding]) -> str:
    """``"26 comparisons, one family; 18 tested so far"``: Holm's m counts only the comparisons with a p-value."""
    tested = sum(not math.isnan(finding.judged.p) for finding in findings)
    return f"{len(findings)} comparisons, one family" + (f"; {tested} tested so far" if tested < len(findings) else "")


def findings_markdown(claims: list[Finding], questions: list[Finding], meta: dict[str, Any],
                      replications: dict[str, tuple[list[Finding], list[Finding]]] | None = None) -> str:
    """``docs/findings.md``: the claims file's title and introduction, the claims table, the questions table, the
    replications on other data sets (:func:`evaluate_replications`), the verdict rule, then its limits."""
    min_effect = meta.get("min_effect", DEFAULT_MIN_EFFECT)
    lines = [f"# {meta.get('title', 'Findings')}", "", str(meta.get("intro", "")).strip(), "",
             f"## Published claims ({_family_size(claims)})", "",
             "| source (where) | claim | published | study: variant vs the paper's reference | metric | "
             "d +- SE (n) | measured / published | p | Holm p | BH q | MDE | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for finding in claims:
        c = finding.item
        ratio = "-" if math.isnan(finding.ratio) else f"{finding.ratio:.2f}"
        effect = "" if c.published_effect is None else f" ({c.published_effect:+g})"
        lines.append(f"| {c.source} ({c.where}) | {c.claim} | {c.published}{effect} | {_where(c.comparison)} | "
                     f"{c.comparison.metric} | {_measured(finding.judged)} | {ratio} | "
                     f"{_stats_cells(finding.judged)} | {finding.verdict} |")
    lines += ["", f"## This project's questions ({_family_size(questions)})", "",
              "Not claims of a paper: what this project asks of its own presets and of its noise floor. Their verdict is "
              "the statistical word alone.", "",
              "| question | study: variant vs reference | metric | d +- SE (n) | p | Holm p | BH q | MDE | verdict |",
              "|---|---|---|---|---|---|---|---|---|"]
    for finding in questions:
        q = finding.item
        lines.append(f"| {q.question} | {_where(q.comparison)} | {q.comparison.metric} | "
                     f"{_measured(finding.judged)} | {_stats_cells(finding.judged)} | {finding.verdict} |")
    lines += replications_markdown([*claims, *questions], replications or {}, meta)
    lines += ["", f"d: the difference variant - reference paired by seed (mean +- standard error, n seeds); p: the "
              f"paired t-test; Holm p: adjusted over the table's family; BH q: Benjamini-Hochberg (shown, not used); "
              f"MDE: t(0.975, n-1) sd(d) / sqrt(n). A comparison reads better or worse when its Holm p < 0.05, "
              f"equivalent when the Holm-adjusted equivalence test within +-{min_effect:g} passes, unresolved "
              f"otherwise, and preliminary below 5 paired seeds (yolo_loss/studies/stats.py). A claim is reproduced or "
              f"contradicted only on a better, worse or equivalent comparison (yolo_loss/studies/findings.py). "
              f"Measured / published: the ratio of the two effects in the metric's units where the paper gives a "
              f"number; the data sets differ, so it says how much of the effect transfers, not whether the paper is right.",
              "", str(meta.get("limits", "")).strip(), ""]
    return "\n".join(lines)
