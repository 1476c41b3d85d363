"""Two models on the same test texts, compared pair by pair: ``python -m emotion_pipeline.compare A B``.

A and B are git revisions (a branch, tag or commit), experiment names (as `dvc exp show` or
`dvc exp ls` list them, queued ones included once they ran) or ``workspace``. Each side's
metrics/predictions.csv (the evaluate stage's, one row per test text) is read through DVC's API
(``dvc.api.open``): from the workspace, or from the DVC cache (else the default remote) as that
revision's dvc.lock records it; nothing is checked out. ``--baseline [REV]`` compares REV's TF-IDF
baseline (metrics/baseline_predictions.csv, A) with its fine-tune (B).

It prints, for accuracy and macro-F1, both scores with their bootstrap intervals, the difference
B − A with a paired-bootstrap interval, McNemar's exact test on the texts where exactly one model is
right, and a one-line verdict (emotion_pipeline.evaluation.uncertainty does the statistics), then the lines of the
two sides' environment blocks that differ (versions, torch build, CPU, threads: why the last bits may differ). Predictions over
different test sets (other texts, another order) are refused, never compared. Bad input (an unknown
revision, a revision without predictions) exits 2 with one paragraph, as the stages do.

The bootstrap settings default to params.yaml's defaults (metrics.bootstrap_resamples, confidence,
bootstrap_seed) and are options here, not read from params.yaml: a revision's params may differ,
and the comparison must not depend on which side's file is read.
"""

from __future__ import annotations

import argparse
import io
import json
from dataclasses import dataclass

import pandas as pd

from emotion_pipeline.commands import run_command
from emotion_pipeline.config import DataConfig, MetricsConfig
from emotion_pipeline.errors import UserError, first_line
from emotion_pipeline.evaluation.reports import environment_lines, format_interval, text_table, verdict, with_interval
from emotion_pipeline.evaluation.uncertainty import COMPARED_SCORES, paired_comparison, paired_labels, score_intervals
from emotion_pipeline.paths import BASELINE_PREDICTIONS, PARAMS_FILE, PREDICTIONS, TEST_DETAILS, TRAIN_RUN_INFO

WORKSPACE = "workspace"
DEFAULTS = MetricsConfig()


@dataclass(frozen=True)
class Side:
    """One side of a comparison: what the user named, the commit it resolved to (None: the workspace), the file."""

    name: str
    commit: str | None
    kind: str  # "workspace", "experiment" or "git revision"
    path: str

    def describe(self) -> str:
        where = "the workspace" if self.commit is None else f"{self.kind} {self.name}, commit {self.commit[:7]}"
        return f"{self.path} of {where}"


def resolve(name: str) -> tuple[str | None, str]:
    """The commit a revision name stands for, and what kind of name it was; UserError for an unknown one.

    Experiment names first (DVC keeps them as refs under refs/exps, which git revision syntax does
    not reach), then anything git resolves: a branch, a tag, a full or abbreviated commit, HEAD~1.
    """
    if name == WORKSPACE:
        return None, WORKSPACE
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo
    from dvc.repo.experiments.utils import resolve_name

    try:
        repo = Repo()
    except NotDvcRepoError:
        raise UserError("not inside a DVC project: run the comparison from the project folder (where dvc.yaml is).") from None
    with repo:
        try:
            ref = resolve_name(repo.scm, name).get(name)
        except Exception as exc:  # noqa: BLE001  an ambiguous name (two baselines), reported in DVC's words
            raise UserError(f"experiment name '{name}' is ambiguous: {first_line(exc)}") from None
        if ref is not None:
            return repo.scm.get_ref(str(ref)), "experiment"
        try:
            return repo.scm.resolve_rev(name), "git revision"
        except Exception:  # noqa: BLE001  scmrepo raises its own error types per git backend
            raise UserError(
                f"unknown revision '{name}': it is not '{WORKSPACE}', not an experiment name (`dvc exp show` or "
                "`dvc exp ls` lists them; a queued experiment has one once it ran) and not a git revision (branch, "
                "tag or commit) of this repository.") from None


def class_labels(a: Side, b: Side) -> list[str]:
    """The classes both sides were scored over, in id order: each revision's data.labels, as evaluate scored them.
    A class neither predicted nor present still counts in macro-F1 (as 0), as it does in metrics/test.json."""
    import dvc.api
    import yaml

    def labels(side: Side) -> list[str]:
        try:
            params = yaml.safe_load(dvc.api.read(str(PARAMS_FILE), rev=side.commit)) or {}
        except Exception:  # noqa: BLE001  no params.yaml there: the defaults, as the stages would read them
            params = {}
        return (params.get("data") or {}).get("labels") or DataConfig().labels

    first, second = labels(a), labels(b)
    if first != second:
        raise UserError(f"'{a.name}' and '{b.name}' classify into other classes (data.labels {first} and {second}): "
                        f"their scores do not compare.")
    return first


def read_predictions(side: Side) -> pd.DataFrame:
    """A side's predictions table, read through DVC from the workspace or from that revision's cached outputs."""
    import dvc.api
    from dvc.exceptions import DvcException, PathMissingError

    stage = "baseline" if side.path == str(BASELINE_PREDICTIONS) else "evaluate"
    try:
        text = dvc.api.read(side.path, rev=side.commit)
    except PathMissingError:
        if recorded_output(side):
            raise UserError(
                f"no predictions for '{side.name}': {side.describe()} is recorded in that revision's dvc.lock, but its "
                "content is not in this DVC cache (`dvc gc` removes what no kept revision uses). `dvc pull` fetches it "
                "from a remote that has it; else `dvc exp apply` that revision (or check it out) and `dvc repro` "
                "rebuilds it.") from None
        raise UserError(
            f"no predictions for '{side.name}': {side.describe()} does not exist (neither a DVC output recorded in "
            f"that revision's dvc.lock nor a file in git), so the {stage} stage never ran there. Run it "
            "(`dvc repro` or `dvc exp run`), or name a revision that ran it (`dvc exp show` lists their metrics).") from None
    except (FileNotFoundError, DvcException) as exc:
        raise UserError(
            f"no predictions for '{side.name}': {side.describe()} is recorded, but its content is neither in this "
            f"DVC cache nor in the default remote ({first_line(exc)}). Fetch it with `dvc pull` (a commit) or "
            "`dvc exp pull <remote> <name>` (an experiment).") from None
    return pd.read_csv(io.StringIO(text), keep_default_na=False)


def recorded_output(side: Side) -> bool:
    """Whether the side's revision lists its predictions file among the outputs in its dvc.lock."""
    import dvc.api
    import yaml

    try:
        lock = yaml.safe_load(dvc.api.read("dvc.lock", rev=side.commit)) or {}
    except Exception:  # noqa: BLE001  no dvc.lock there: nothing recorded
        return False
    return any(out.get("path") == side.path for stage in (lock.get("stages") or {}).values()
               for out in stage.get("outs") or [])


# Where each side's environment blocks are (emotion_pipeline.environment): the run that trained it, the one that scored it.
ENVIRONMENT_FILES = {"train": TRAIN_RUN_INFO, "evaluate": TEST_DETAILS}


def read_environments(side: Side) -> dict[str, dict | None]:
    """A side's environment blocks by stage; None where a file or its block is missing (an older run, a cache gap):
    the comparison of predictions does not depend on them."""
    import dvc.api

    environments = {}
    for stage, path in ENVIRONMENT_FILES.items():
        try:
            environments[stage] = json.loads(dvc.api.read(str(path), rev=side.commit)).get("environment")
        except Exception:  # noqa: BLE001  any reason it cannot be read only means there is nothing to show
            environments[stage] = None
    return environments


def environment_section(a: dict[str, dict | None], b: dict[str, dict | None]) -> list[str]:
    """The lines of the environment blocks in which A and B differ, per stage ('the same' when none do)."""
    lines = []
    for stage in ENVIRONMENT_FILES:
        if a.get(stage) is None or b.get(stage) is None:
            missing = " and ".join(side for side, envs in (("A", a), ("B", b)) if envs.get(stage) is None)
            lines.append(f"  {stage}: no environment block recorded for {missing} (a run from before they were written)")
            continue
        differences = environment_differences(a[stage], b[stage])
        lines += [f"  {stage}: the same on both sides"] if not differences else \
            [f"  {stage}: {key}: {first} (A) -> {second} (B)" for key, first, second in differences]
    return lines


def compare(a: Side, b: Side, resamples: int, confidence: float, seed: int) -> dict:
    """Both sides' scores with intervals, the paired comparison B − A, and the verdict, as one dict."""
    table_a, table_b = read_predictions(a), read_predictions(b)
    labels = class_labels(a, b)
    y_true, pred_a, pred_b = paired_labels(table_a, table_b, f"'{a.name}' ({a.describe()})", f"'{b.name}' ({b.describe()})",
                                           labels)
    comparison = paired_comparison(y_true, pred_a, pred_b, len(labels), resamples, confidence, seed)
    own = {side: score_intervals(y_true, pred, labels, resamples, confidence, seed)
           for side, pred in (("a", pred_a), ("b", pred_b))}
    return {"a": {"name": a.name, "commit": a.commit, "file": a.path},
            "b": {"name": b.name, "commit": b.commit, "file": b.path},
            **comparison,
            "intervals": {side: {score: intervals[score] for score in COMPARED_SCORES} for side, intervals in own.items()},
            "verdict": verdict(comparison),
            "environment": {"a": read_environments(a), "b": read_environments(b)}}


def report(a: Side, b: Side, result: dict) -> str:
    """The comparison as a reader wants it on a terminal."""
    settings, test = result["bootstrap"], result["mcnemar"]
    rows = [("score", "A", "B", "B − A (paired)")]
    for score, title in (("accuracy", "accuracy"), ("macro_f1", "macro-F1")):
        s = result[score]
        rows.append((title, with_interval(s["a"], result["intervals"]["a"][score]),
                     with_interval(s["b"], result["intervals"]["b"][score]),
                     f"{s['difference']:+.4f} {format_interval(s['difference_interval'], signed=True)}"))
    table = text_table(rows)
    return "\n".join([
        f"A: {a.describe()}",
        f"B: {b.describe()}",
        f"{result['examples']} test texts, the same on both sides; {settings['confidence']:.0%} intervals from "
        f"{settings['resamples']} bootstrap resamples of them (seed {settings['seed']}), the same resamples for A and B.",
        "",
        *table,
        "",
        f"McNemar's exact test: A alone is right on {test['only_a_right']} texts, B alone on {test['only_b_right']}: "
        f"p = {test['p_value']:.3g}.",
        f"Verdict: {result['verdict']}",
        "",
        "Environment (what computed each side; the lines in which they differ):",
        *environment_section(result["environment"]["a"], result["environment"]["b"]),
    ]) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m emotion_pipeline.compare",
        usage="%(prog)s A B | --baseline [REV]  [--resamples N] [--confidence C] [--seed S] [--json]",
        description="Compare two models on the same test texts: score differences with paired bootstrap intervals, "
                    "McNemar's exact test and a verdict. A, B, REV: a git revision, an experiment name or 'workspace'.")
    parser.add_argument("revisions", nargs="*", metavar="A B", help="the two sides: B − A is reported")
    parser.add_argument("--baseline", nargs="?", const=WORKSPACE, metavar="REV",
                        help="compare REV's TF-IDF baseline (A) with its fine-tune (B); REV defaults to the workspace")
    add_bootstrap_options(parser)
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON")
    args = parser.parse_args(argv)
    run_command(lambda: run(args))


def add_bootstrap_options(parser: argparse.ArgumentParser) -> None:
    """--resamples, --confidence and --seed of the intervals and the paired verdict (compare, ensemble)."""
    parser.add_argument("--resamples", type=int, default=DEFAULTS.bootstrap_resamples,
                        help=f"bootstrap resamples (default: {DEFAULTS.bootstrap_resamples})")
    parser.add_argument("--confidence", type=float, default=DEFAULTS.confidence,
                        help=f"confidence level of the intervals; the verdict's significance level is 1 - it "
                             f"(default: {DEFAULTS.confidence})")
    parser.add_argument("--seed", type=int, default=DEFAULTS.bootstrap_seed,
                        help=f"seed of the resampling (default: {DEFAULTS.bootstrap_seed})")


def check_bootstrap_options(args: argparse.Namespace) -> None:
    if args.resamples < 100 or not 0 < args.confidence < 1 or args.seed < 0:
        raise UserError("--resamples must be at least 100, --confidence between 0 and 1, --seed at least 0.")


def run(args: argparse.Namespace) -> None:
    check_bootstrap_options(args)
    if args.baseline is not None:
        if args.revisions:
            raise UserError("give two revisions A B, or --baseline [REV] alone, not both.")
        commit, kind = resolve(args.baseline)
        a = Side(args.baseline, commit, kind, str(BASELINE_PREDICTIONS))
        b = Side(args.baseline, commit, kind, str(PREDICTIONS))
    elif len(args.revisions) == 2:
        a, b = (Side(name, *resolve(name), str(PREDICTIONS)) for name in args.revisions)
    else:
        raise UserError(f"give two revisions to compare (A B: git revisions, experiment names or '{WORKSPACE}'), "
                        f"or --baseline [REV]; got {len(args.revisions)}.")
    result = compare(a, b, args.resamples, args.confidence, args.seed)
    print(json.dumps(result, indent=2, sort_keys=True) if args.json else report(a, b, result), end="\n" if args.json else "")


def environment_differences(a: dict | None, b: dict | None) -> list[tuple[str, str, str]]:
    """(key, value in a, value in b) for each line in which two environment blocks differ, in a's order."""
    first = dict(line.split(": ", 1) for line in environment_lines(a or {}))
    second = dict(line.split(": ", 1) for line in environment_lines(b or {}))
    keys = list(first) + [key for key in second if key not in first]
    return [(key, first.get(key, "-"), second.get(key, "-")) for key in keys if first.get(key) != second.get(key)]


if __name__ == "__main__":
    main()
