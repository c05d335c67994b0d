"""A run's figures and Markdown summary as files, for readers without the W&B interface.

:class:`~cssa_lightning.reporting.callbacks.RunReport` keeps what it logs to W&B also in
``<run dir>/report/data.json`` (per-class test AP with the class priors, per-epoch thresholds
and pseudo-label precision/recall per class, contexts and the co-occurrence affinity, learning
rates, validation curves, final test metrics) and writes this report at the end of fit and
test. Re-write it from the data file with::

    cssa report RUN_DIR                 # or: python -m cssa_lightning.reporting.report RUN_DIR

``RUN_DIR`` is the run folder (a W&B run such as ``outputs/demo/wandb/latest-run``, its
``files`` folder, a TensorBoard/CSV version folder) or its ``report`` folder. The figures are
made with matplotlib's object API (no global state, no display needed).
"""

from __future__ import annotations

import argparse
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # matplotlib loads when a figure is drawn: `cssa report --help` stays fast
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

REPORT_DIR = "report"
DATA_FILE = "data.json"
MARKDOWN_FILE = "report.md"
SCORE_LABELS = {"": "student", "_teacher": "teacher"}


# Class names in figures are at least this size (points), so they stay legible.
LABEL_SIZE = 8
# The thresholds-vs-priors scatter names only this many classes (the most unusual thresholds).
ANNOTATED_CLASSES = 12


# -- figures (pure: data in, matplotlib Figure out) ---------------------------------------------


def _figure(**kwargs: Any) -> Figure:
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _order_by(values: Sequence[float | None]) -> np.ndarray:
    return np.argsort([-(v if v is not None else -math.inf) for v in values], kind="stable")


def _array(values: Sequence[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def figure_test_ap(
    class_names: Sequence[str],
    priors: Sequence[float],
    ap: dict[str, Sequence[float | None]],
) -> Figure:
    """Per-class test AP of each score set (student, teacher), classes by decreasing prior."""
    order = _order_by(priors)
    names = [class_names[i] for i in order]
    y = np.arange(len(names))
    fig = _figure(figsize=(8, 1.5 + 0.22 * len(names)), layout="constrained")
    ax = fig.add_subplot()
    height = 0.8 / max(len(ap), 1)
    for k, (suffix, values) in enumerate(ap.items()):
        ax.barh(
            y + k * height, _array(values)[order], height, label=SCORE_LABELS.get(suffix, suffix)
        )
    ax.set_yticks(y + height * (len(ap) - 1) / 2, names, fontsize=LABEL_SIZE)
    ax.invert_yaxis()
    ax.set_xlabel("test AP (%)")
    ax.set_xlim(0, 100)
    prior_ax = ax.twiny()
    prior_ax.plot(np.asarray(priors)[order], y, "k.", markersize=4, label="labeled prior")
    prior_ax.set_xlabel("labeled class prior (dots)")
    prior_ax.set_xlim(0, max(max(priors, default=0.0) * 1.1, 1e-3))
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Per-class test AP, classes by decreasing prior", fontsize=10)
    return fig


def figure_pseudo_labels(
    class_names: Sequence[str],
    priors: Sequence[float],
    thresholds: Sequence[float | None],
    precision: Sequence[float | None],
    recall: Sequence[float | None],
    epoch: int,
) -> Figure:
    """Thresholds against priors, and per-class pseudo-label precision / recall of one epoch."""
    fig = _figure(figsize=(6 + 0.2 * len(class_names), 5), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=(1, 2))
    t = _array(thresholds)
    left.scatter(priors, t, s=12)
    # Names of the classes whose thresholds stand out most (all of them would overlap).
    finite = np.flatnonzero(np.isfinite(t))
    if len(finite):
        spread = np.abs(t[finite] - np.median(t[finite]))
        for i in finite[np.argsort(-spread, kind="stable")][:ANNOTATED_CLASSES]:
            left.annotate(class_names[i], (priors[i], t[i]), fontsize=LABEL_SIZE, alpha=0.8)
    left.set_xlabel("labeled class prior")
    left.set_ylabel("pseudo-label threshold")
    left.set_title(f"thresholds vs priors (epoch {epoch})", fontsize=10)
    order = _order_by(priors)
    x = np.arange(len(order))
    right.bar(x - 0.2, _array(precision)[order], 0.4, label="precision")
    right.bar(x + 0.2, _array(recall)[order], 0.4, label="recall")
    right.set_xticks(x, [class_names[i] for i in order], rotation=90, fontsize=LABEL_SIZE)
    right.set_ylim(0, 100)
    right.set_ylabel("%")
    right.legend(fontsize=8)
    right.set_title("pseudo-labels vs hidden labels, classes by decreasing prior", fontsize=10)
    return fig


def figure_affinity(
    class_names: Sequence[str], affinity: Sequence[Sequence[float]], class_to_context: Sequence[int]
) -> Figure:
    """Co-occurrence affinity of the labeled split as a heat-map, classes grouped by context."""
    order = np.argsort(np.asarray(class_to_context), kind="stable")
    matrix = np.asarray(affinity, dtype=float)[np.ix_(order, order)]
    names = [f"{class_names[i]} ({class_to_context[i]})" for i in order]
    side = 3 + 0.2 * len(names)
    fig = _figure(figsize=(side + 1, side), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="viridis")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=LABEL_SIZE)
    ax.set_yticks(range(len(names)), names, fontsize=LABEL_SIZE)
    contexts = np.asarray(class_to_context)[order]
    for edge in np.flatnonzero(np.diff(contexts)) + 0.5:
        ax.axhline(edge, color="white", linewidth=0.8)
        ax.axvline(edge, color="white", linewidth=0.8)
    fig.colorbar(image, ax=ax, shrink=0.8, label="affinity")
    ax.set_title("Label co-occurrence affinity (labeled split), by context", fontsize=10)
    return fig


def figure_curves(
    epochs: Sequence[dict[str, Any]],
    validation: Sequence[dict[str, Any]],
    warmup_epochs: int | None = None,
    tested_epoch: int | None = None,
) -> Figure:
    """Validation mAP and pseudo-label precision / recall (all classes) per epoch, with the
    end of the warm-up (dotted) and the epoch whose weights were tested (dashed) marked."""
    fig = _figure(figsize=(10, 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    for ax in (left, right):
        if warmup_epochs:
            ax.axvline(warmup_epochs - 0.5, color="grey", linestyle=":", label="warm-up end")
        if tested_epoch is not None:
            ax.axvline(
                tested_epoch, color="black", linestyle="--", label=f"tested (epoch {tested_epoch})"
            )
    _plot_per_epoch(left, validation, ("val/mAP", "val/mAP_teacher"), "mAP (%)", "validation")
    _plot_per_epoch(
        right,
        epochs,
        ("pseudo/precision", "pseudo/recall"),
        "%",
        "pseudo-labels vs hidden labels, all classes",
    )
    return fig


def tested_epoch_record(data: dict[str, Any]) -> dict[str, Any] | None:
    """The per-epoch record (thresholds, pseudo-label quality) of the epoch whose weights the
    test used, else of the last epoch that has thresholds."""
    epochs = [e for e in data.get("epochs") or [] if e.get("thresholds")]
    tested = (data.get("test") or {}).get("epoch")
    return next((e for e in epochs if e["epoch"] == tested), epochs[-1] if epochs else None)


def _plot_per_epoch(
    ax: Axes, rows: Sequence[dict[str, Any]], keys: Sequence[str], ylabel: str, title: str
) -> None:
    """One line per key against the rows' ``epoch`` (rows without the key are skipped)."""
    for key in keys:
        points = [(row["epoch"], row[key]) for row in rows if row.get(key) is not None]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if ax.lines:
        ax.legend(fontsize=8)


def figure_learning_rates(learning_rates: Sequence[dict[str, Any]]) -> Figure:
    """Learning rate of each optimizer parameter group against the step."""
    fig = _figure(figsize=(7, 3.5), layout="constrained")
    ax = fig.add_subplot()
    if learning_rates:
        steps = [r["step"] for r in learning_rates]
        values = np.array([r["lr"] for r in learning_rates], dtype=float)
        names = learning_rates[-1].get("names") or []  # runs before names: "group i"
        for group in range(values.shape[1]):
            label = names[group] if group < len(names) else f"group {group}"
            ax.plot(steps, values[:, group], label=label)
        ax.legend(fontsize=8)
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.set_yscale("log")
    ax.set_title("Learning rates", fontsize=10)
    return fig


def figure_examples(
    weak: Sequence[np.ndarray],
    strong: Sequence[np.ndarray],
    pseudo: Sequence[Sequence[str]],
    hidden: Sequence[Sequence[str]],
    epoch: int,
) -> Figure:
    """Unlabeled images (weak and strong view) with teacher pseudo-labels vs hidden labels."""
    n = len(weak)
    fig = _figure(figsize=(2.2 * n, 5.6), layout="constrained")
    axes = fig.subplots(2, n, squeeze=False)
    for i in range(n):
        for row, view in enumerate((weak, strong)):
            axes[row, i].imshow(view[i])
            axes[row, i].set_xticks([])
            axes[row, i].set_yticks([])
        axes[0, i].set_title(
            _wrap("pseudo: " + (", ".join(pseudo[i]) or "-")), fontsize=6, loc="left"
        )
        axes[1, i].set_xlabel(
            _wrap("hidden: " + (", ".join(hidden[i]) or "-")), fontsize=6, loc="left"
        )
    axes[0, 0].set_ylabel("weak")
    axes[1, 0].set_ylabel("strong")
    fig.suptitle(f"Unlabeled images, teacher pseudo-labels vs hidden labels (epoch {epoch})")
    return fig


def _wrap(text: str, width: int = 34) -> str:
    lines, line = [], ""
    for word in text.split(" "):
        if line and len(line) + len(word) + 1 > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join([*lines, line])


def figure_to_image(fig: Figure, dpi: int = 110) -> Image.Image:
    """Render a figure to an RGB PIL image (for ``wandb.Image``)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


# -- the report ---------------------------------------------------------------------------------
def find_data_file(run_dir: str | Path) -> Path:
    """The ``data.json`` of a run folder, its W&B ``files`` folder or its ``report`` folder.

    Raises:
        FileNotFoundError: None of those holds one.
    """
    run_dir = Path(run_dir).expanduser()
    candidates = [
        run_dir / DATA_FILE,
        run_dir / REPORT_DIR / DATA_FILE,
        run_dir / "files" / REPORT_DIR / DATA_FILE,
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{run_dir}: no run report data (looked for {', '.join(str(c) for c in candidates)}); "
        "runs record it with the cssa_lightning.reporting.callbacks.RunReport callback"
    )


def read_data(path: str | Path) -> dict[str, Any]:
    """Read a report data file.

    Raises:
        ValueError: The file is not a report data file.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(data, dict) or "class_names" not in data:
        raise ValueError(f"{path}: expected a RunReport data file with 'class_names'")
    return data


def write_figures(data: dict[str, Any], out_dir: Path) -> dict[str, str]:
    """Write every figure the data allows as PNG into ``out_dir``; returns ``{title: file}``."""
    names, priors = data["class_names"], data["priors"]
    figures: dict[str, tuple[str, Figure]] = {}
    test = data.get("test") or {}
    if test.get("per_class_ap"):
        figures["Per-class test AP"] = (
            "test_ap.png",
            figure_test_ap(names, priors, test["per_class_ap"]),
        )
    epochs = data.get("epochs") or []
    last = tested_epoch_record(data)
    if last is not None:
        figures[f"Pseudo-labels per class (epoch {last['epoch']})"] = (
            "pseudo_labels.png",
            figure_pseudo_labels(
                names, priors, last["thresholds"], last["precision"], last["recall"], last["epoch"]
            ),
        )
    if epochs or data.get("validation"):
        figures["Validation and pseudo-label curves"] = (
            "curves.png",
            figure_curves(
                epochs,
                data.get("validation") or [],
                (data.get("run") or {}).get("warmup_epochs"),
                test.get("epoch"),
            ),
        )
    contexts = data.get("contexts")
    if contexts:
        figures["Co-occurrence affinity by context"] = (
            "contexts.png",
            figure_affinity(names, contexts["affinity"], contexts["class_to_context"]),
        )
    if data.get("learning_rates"):
        figures["Learning rates"] = (
            "learning_rates.png",
            figure_learning_rates(data["learning_rates"]),
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for title, (file_name, fig) in figures.items():
        fig.savefig(out_dir / file_name, dpi=110)
        written[title] = file_name
    return written


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def markdown(data: dict[str, Any], figures: dict[str, str]) -> str:
    """The Markdown summary of a run's report data."""
    names = data["class_names"]
    run = data.get("run") or {}
    lines = [f"# Run report: {run.get('name') or run.get('folder') or 'run'}", ""]
    for key in ("folder", "task", "seed", "labeled_ratio", "max_epochs", "warmup_epochs", "commit"):
        if run.get(key) is not None:
            lines.append(f"- {key.replace('_', ' ')}: `{run[key]}`")
    lines.append("")
    best = data.get("best") or {}
    if best:
        lines += ["## Best validation", "", "| metric | best | epoch |", "|---|---|---|"]
        lines += [f"| {k} | {_fmt(v['value'])} | {v['epoch']} |" for k, v in best.items()]
        lines.append("")
    test = data.get("test") or {}
    if test.get("metrics"):
        lines += ["## Test", ""]
        if test.get("checkpoint"):
            lines += [f"Weights: `{test['checkpoint']}`", ""]
        if test.get("epoch") is not None:
            lines += [f"Tested epoch (0-based): {test['epoch']}.", ""]
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in sorted(test["metrics"].items())]
        lines.append("")
    lines += _class_table(data)
    contexts = data.get("contexts")
    if contexts:
        groups: dict[int, list[str]] = {}
        for name, context in zip(names, contexts["class_to_context"], strict=True):
            groups.setdefault(int(context), []).append(name)
        lines += ["## Contexts (spectral clustering of labeled co-occurrence)", ""]
        lines += [f"- context {k}: {', '.join(v)}" for k, v in sorted(groups.items())]
        lines.append("")
    examples = data.get("examples") or []
    if examples:
        figures = {
            **figures,
            f"Unlabeled examples (epoch {examples[-1]['epoch']})": examples[-1]["file"],
        }
    if figures:
        lines += ["## Figures", ""]
        for title, file_name in figures.items():
            lines += [f"### {title}", "", f"![{title}]({file_name})", ""]
    return "\n".join(lines).rstrip() + "\n"


def _class_table(data: dict[str, Any]) -> list[str]:
    names, priors = data["class_names"], data["priors"]
    columns: dict[str, Sequence[float | None]] = {"prior": priors}
    contexts = data.get("contexts")
    if contexts:
        columns["context"] = contexts["class_to_context"]
    for suffix, values in ((data.get("test") or {}).get("per_class_ap") or {}).items():
        columns[f"test AP {SCORE_LABELS.get(suffix, suffix)}"] = values
    last = tested_epoch_record(data)
    if last is not None:
        columns["threshold"] = last["thresholds"]
        columns["pseudo precision"] = last["precision"]
        columns["pseudo recall"] = last["recall"]
    lines = ["## Per class", ""]
    if last is not None:
        lines += [f"Thresholds and pseudo-label quality of epoch {last['epoch']}.", ""]
    lines += ["| class | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for i, name in enumerate(names):
        cells = []
        for column, values in columns.items():
            value = values[i]
            if column == "context":
                cells.append(str(value))
            else:
                cells.append(_fmt(value, 3 if column in ("prior", "threshold") else 1))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def write_report(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write the figures and ``report.md`` of a run; returns the Markdown file.

    Args:
        run_dir: The run folder, its W&B ``files`` folder or its ``report`` folder.
        out_dir: Where to write; default: beside the data file.
    """
    data_file = find_data_file(run_dir)
    data = read_data(data_file)
    out = Path(out_dir) if out_dir is not None else data_file.parent
    figures = write_figures(data, out)
    if out != data_file.parent:
        for example in data.get("examples") or []:
            source = data_file.parent / example["file"]
            if source.is_file():
                (out / example["file"]).write_bytes(source.read_bytes())
    path = out / MARKDOWN_FILE
    path.write_text(markdown(data, figures), encoding="utf-8")
    return path


def main(argv: Sequence[str] | None = None) -> None:
    """``cssa report RUN_DIR [--output DIR]``."""
    parser = argparse.ArgumentParser(
        prog="cssa report",
        description="Write a run's figures (PNG) and Markdown summary from its report data.",
    )
    parser.add_argument("run_dir", help="run folder, its W&B files folder or its report folder")
    parser.add_argument(
        "--output",
        "--out",  # the name before every command said --output
        dest="out",
        default=None,
        help="output folder (default: beside the data)",
    )
    args = parser.parse_args(argv)
    try:
        path = write_report(args.run_dir, args.out)
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    print(path)


if __name__ == "__main__":
    main()
