"""A study's results: the table of trials (tune/<study>/trials.md), the best one and the command that adopts it,
and Optuna's history and importance plots as PNG files."""

from __future__ import annotations

import sys
from pathlib import Path

from emotion_pipeline.errors import first_line
from emotion_pipeline.search.space import TuneConfig, override
from emotion_pipeline.search.study import STUDY_DIR
from emotion_pipeline.search.trial import PRUNED_AT_EPOCH


def trials_table(study, config: TuneConfig) -> str:
    """Markdown: every trial, its state, params, objective and wall time; the best first among the complete ones."""
    keys = list(config.space)
    header = ["trial", "experiment", "state", *keys, config.objective_key, "queued to done", "note"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for trial in study.get_trials(deepcopy=False):
        pruned_at = trial.user_attrs.get(PRUNED_AT_EPOCH)
        note = trial.user_attrs.get("error") or ("" if pruned_at is None else
                                                 f"after epoch {pruned_at} ({trial.intermediate_values.get(pruned_at, 0):.4f})")
        wall = trial.user_attrs.get("wall_time_s")
        value = "" if trial.value is None or trial.state.name != "COMPLETE" else f"{trial.value:.4f}"
        cells = [str(trial.number), trial.user_attrs.get("experiment", ""), trial.state.name.lower(),
                 *[format_value(trial.params.get(key)) for key in keys], value, f"{wall:.0f} s" if wall else "",
                 note.replace("|", "/")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_value(value) -> str:
    return "" if value is None else f"{value:.3g}" if isinstance(value, float) else str(value)


def write_report(study, config: TuneConfig, storage_url: str) -> Path:
    """tune/<study>/: trials.md (table, best trial, adopt command) and the history / importance plots as PNG."""
    out = STUDY_DIR / config.study
    out.mkdir(parents=True, exist_ok=True)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    text = [f"# Study {config.study}\n", f"Objective: {config.objective} ({config.direction}), sampler {config.sampler} "
            f"(seed {config.seed}), pruner {config.pruner}; storage {storage_url}.\n"]
    counts = {state: sum(t.state.name.lower() == state for t in study.get_trials(deepcopy=False))
              for state in ("complete", "pruned", "fail", "running")}
    text.append(", ".join(f"{n} {state}" for state, n in counts.items() if n) + ".\n")
    if complete:
        best = study.best_trial
        name = best.user_attrs.get("experiment")
        text.append(f"**Best: trial {best.number} ({name}), {config.objective_key} = {best.value:.6g}**: "
                    + ", ".join(override(k, v) for k, v in best.params.items()) + f".\n\nAdopt it: `dvc exp apply {name}` "
                    f"(then `dvc repro` for the stages the trials did not run, and commit).\n")
    text.append(trials_table(study, config))
    plots = write_plots(study, out) if complete else []
    text.extend(f"\n![{p.stem}]({p.name})\n" for p in plots)
    (out / "trials.md").write_text("\n".join(text), encoding="utf-8")
    return out


def write_plots(study, out: Path) -> list[Path]:
    """Optuna's optimisation history and (with two complete trials or more) param importances, as PNG files:
    matplotlib, no browser or CDN needed."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.exceptions import ExperimentalWarning
    from optuna.visualization import matplotlib as optuna_plots

    warnings.filterwarnings("ignore", category=ExperimentalWarning)  # "the interface can change": ours is pinned here

    written = []
    plots = [("history", optuna_plots.plot_optimization_history)]
    if sum(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False)) >= 2 and len(study.best_trial.params) > 1:
        plots.append(("importance", optuna_plots.plot_param_importances))
    for name, plot in plots:
        try:
            axes = plot(study)
        except (ValueError, RuntimeError) as exc:  # e.g. importances of params that never varied
            print(f"warning: no {name} plot ({first_line(exc)})", file=sys.stderr)
            continue
        axes.figure.set_size_inches(8, 4.5)
        axes.figure.tight_layout()
        axes.figure.savefig(out / f"{name}.png", dpi=100)
        plt.close(axes.figure)
        written.append(out / f"{name}.png")
    return written


def summary(study, config: TuneConfig, out: Path) -> str:
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if not complete:
        return f"no complete trial yet; table in {out / 'trials.md'}"
    best = study.best_trial
    return (f"best: trial {best.number} ({best.user_attrs.get('experiment')}), {config.objective_key} = {best.value:.6g}: "
            + ", ".join(override(k, v) for k, v in best.params.items())
            + f"\ntable and plots: {out}/trials.md\nadopt it: dvc exp apply {best.user_attrs.get('experiment')}")
