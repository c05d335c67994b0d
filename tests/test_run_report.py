"""RunReport: the W&B tables, images, config and summary of an offline run, read back with the
``wandb`` SDK (``wandb leet inspect``, which reads the run's ``.wandb`` log), and the same
figures as files (``cssa report``)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.text
import numpy as np
import pytest
import yaml

from cssa_lightning.commands.entry import main
from cssa_lightning.reporting.report import find_data_file, write_report
from tests.conftest import CLASS_NAMES, fit_config

CSSA_ARGS = {
    "label_specific": True,
    "attention_heads": 2,
    "context": {"num_contexts": 2, "hidden": 16},
    "warmup_epochs": 1,
    "ema_decay": 0.9,
}
REPORT = {
    "class_path": "cssa_lightning.reporting.callbacks.RunReport",
    "init_args": {"num_examples": 3},
}
LR_MONITOR = {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor"}


def read_wandb_run(run_dir: Path) -> dict:
    """Config, history rows and final summary of an offline run from its ``.wandb`` log."""
    wandb = shutil.which("wandb") or str(Path(sys.executable).parent / "wandb")
    result = subprocess.run(
        [wandb, "leet", "inspect", "--json", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    config, history, summary, artifacts = {}, [], {}, {}
    for line in result.stdout.splitlines():
        record = json.loads(line)
        kind = record.get("type")
        if kind == "run":
            config.update(record["run"].get("config", {}).get("update", {}))
        elif kind == "config":
            config.update(record["config"].get("update", {}))
        elif kind == "history":
            history.append(unflatten(record["history"]["item"]))
        elif kind == "summary":
            summary.update(record["summary"].get("update", {}))
        elif kind == "artifact":
            contents = record["artifact"]["manifest"]["contents"]
            artifacts.setdefault(record["artifact"]["name"], []).append(
                [entry["path"] for entry in contents]
            )
    return {"config": config, "history": history, "summary": summary, "artifacts": artifacts}


def unflatten(item: dict) -> dict:
    """History rows store media as ``key._type``, ``key.path``...: one dict per key."""
    row: dict = {}
    for key, value in item.items():
        name, dot, field = key.partition(".")
        if dot:
            row.setdefault(name, {})[field] = value
        else:
            row[key] = value
    return row


@pytest.fixture(scope="module")
def cssa_run(tmp_path_factory, image_folders, tiny_clip_dir) -> Path:
    """One tiny CSSA fit + test through the CLI, logged to an offline W&B run."""
    tmp_path = tmp_path_factory.mktemp("report-run")
    config = fit_config(
        tmp_path,
        image_folders,
        tiny_clip_dir,
        "cssa_lightning.CSSATask",
        CSSA_ARGS,
        callbacks=[{"class_path": "tests.test_cli.RecordMetrics"}, REPORT, LR_MONITOR],
    )
    main(["fit", "--config", str(config)])
    [run] = (tmp_path / "wandb").glob("offline-run-*")
    return run


@pytest.fixture(scope="module")
def run_folder(cssa_run) -> Path:
    """The run's own folder: ``<save_dir>/<project>/<W&B run id>``."""
    return cssa_run.parent.parent / "cssa-tests" / cssa_run.name.rsplit("-", 1)[1]


def test_one_folder_holds_the_run_s_checkpoints_config_log_report_and_wandb_files(
    cssa_run, run_folder
):
    assert {p.name for p in run_folder.iterdir()} >= {
        "checkpoints",
        "cssa-config.yaml",
        "cssa.log",
        "report",
        "wandb",
    }
    assert list((run_folder / "checkpoints").glob("*.ckpt"))
    assert (run_folder / "wandb").is_symlink()
    assert (run_folder / "wandb").resolve() == cssa_run.resolve()
    assert (run_folder.parent / "latest-run").resolve() == run_folder.resolve()
    # Links are relative: the folder can move with its outputs.
    assert not Path(os.readlink(run_folder / "wandb")).is_absolute()


def table(run: Path, value: dict) -> dict:
    assert value["_type"] == "table-file", value
    return json.loads((run / "files" / value["path"]).read_text())


def test_offline_wandb_run_holds_config_tables_images_and_summaries(cssa_run):
    run = read_wandb_run(cssa_run)
    config = run["config"]
    # The complete parsed config, with provenance.
    assert config["seed_everything"] == 1
    assert config["trainer"]["max_epochs"] == 2
    assert config["model"]["class_path"] == "cssa_lightning.CSSATask"
    assert config["model"]["init_args"]["context"]["num_contexts"] == 2
    assert config["data"]["init_args"]["labeled_ratio"] == 0.25
    assert config["cssa_lightning"]["version"]
    assert config["test_after_fit"] is True
    # Once: no flat copy of the model's and data's options beside their sections.
    assert not {"context", "lr", "class_names", "labeled_ratio"} & set(config)

    logged: dict[str, list] = {}
    for row in run["history"]:
        for key, value in row.items():
            logged.setdefault(key, []).append(value)
    # Tables: per-class test AP with priors, per-class pseudo-labels each epoch, contexts,
    # unlabeled examples each epoch.
    assert "test/per_class" in logged
    [test_table] = logged["test/per_class"]
    test_rows = table(cssa_run, test_table)
    assert test_rows["columns"] == ["class", "prior", "AP student", "AP teacher", "context"]
    assert [r[0] for r in test_rows["data"]] == CLASS_NAMES
    assert len(logged["pseudo/per_class"]) == 2  # one per epoch
    pseudo = table(cssa_run, logged["pseudo/per_class"][-1])
    assert pseudo["columns"][:6] == ["epoch", "class", "prior", "threshold", "precision", "recall"]
    assert len(pseudo["data"]) == len(CLASS_NAMES)
    contexts = table(cssa_run, logged["contexts/classes"][0])
    assert {r[1] for r in contexts["data"]} <= {0, 1}
    examples = table(cssa_run, logged["pseudo/examples"][0])
    assert examples["columns"][:5] == ["epoch", "weak", "strong", "pseudo-labels", "hidden labels"]
    assert len(examples["data"]) == 3
    # A table's images travel in its table artifact (uploaded by wandb sync).
    [*_, last_examples] = next(v for k, v in run["artifacts"].items() if "examples" in k)
    assert sum(path.startswith("media/images/") for path in last_examples) == 2 * 3
    # Images: the affinity heat-map, per-class AP and pseudo-label plots, as PNG files.
    for key in (
        "contexts/affinity",
        "test/per_class_ap",
        "pseudo/per_class_plot",
        "pseudo/examples_grid",
    ):
        value = logged[key][-1]
        assert value["_type"] == "images/separated", value
        assert all((cssa_run / "files" / f).is_file() for f in value["filenames"]), key
    # Learning rates (LearningRateMonitor), by named parameter group rather than "pg1".
    # (lr = head_lr here: one group with decay, one without.)
    lr_keys = {key for key in logged if key.startswith("lr-AdamW/")}
    assert lr_keys == {
        "lr-AdamW/alignment+clip+context_head+cross_attention",
        "lr-AdamW/alignment+clip+context_head+cross_attention no-decay",
    }, lr_keys
    assert not any(key.startswith("lr-AdamW/pg") for key in logged)
    # Summaries: best validation mAP (max) and the final test metrics.
    summary = run["summary"]
    assert summary["val/mAP_teacher"]["max"] == pytest.approx(max(logged["val/mAP_teacher"]))
    assert summary["val/mAP"]["max"] == pytest.approx(max(logged["val/mAP"]))
    assert summary["test/mAP"] == pytest.approx(logged["test/mAP"][-1])
    # The run's own files: the config and the log.
    folder = cssa_run.parent.parent / "cssa-tests" / cssa_run.name.rsplit("-", 1)[1]
    saved = yaml.safe_load((folder / "cssa-config.yaml").read_text())
    assert saved["trainer"]["max_epochs"] == 2
    text = (folder / "cssa.log").read_text()
    assert "contexts from labeled co-occurrence" in text
    assert "calibrated class biases" in text


def test_report_data_agrees_with_the_logged_metrics(run_folder):
    data = json.loads(find_data_file(run_folder).read_text())
    assert data["class_names"] == CLASS_NAMES
    assert len(data["priors"]) == len(CLASS_NAMES) and all(0 <= p <= 1 for p in data["priors"])
    test = data["test"]
    for suffix in ("", "_teacher"):
        ap = [v for v in test["per_class_ap"][suffix] if v is not None]
        # Every test class has positives here, so the mean of the per-class APs is the mAP.
        assert len(ap) == len(CLASS_NAMES)
        assert sum(ap) / len(ap) == pytest.approx(test["metrics"][f"test/mAP{suffix}"], abs=1e-3)
    assert [e["epoch"] for e in data["epochs"]] == [0, 1]
    for epoch in data["epochs"]:
        # The monitor's counts: per class, and all classes together as logged.
        assert 0 <= epoch["pseudo/precision"] <= 100 and len(epoch["precision"]) == 6
        assert epoch["images"] > 0 and all(0 <= r <= 1 for r in epoch["pseudo_rate"])
        assert all(t is None or 0 <= t <= 1 for t in epoch["thresholds"])
    assert set(data["best"]) == {"val/mAP", "val/mAP_teacher"}
    assert data["best"]["val/mAP"]["value"] == max(v["val/mAP"] for v in data["validation"])
    assert len(data["learning_rates"]) >= 2
    assert any(n.startswith("alignment+") for n in data["learning_rates"][-1]["names"])
    assert len(data["contexts"]["affinity"]) == len(CLASS_NAMES)
    # The after-fit test used the final weights: those of the last validated epoch.
    assert data["test"]["epoch"] == 1
    assert data["run"]["warmup_epochs"] == CSSA_ARGS["warmup_epochs"]


def test_report_files_and_command(run_folder, tmp_path, capsys):
    folder = run_folder / "report"
    for name in (
        "report.md",
        "test_ap.png",
        "pseudo_labels.png",
        "contexts.png",
        "curves.png",
        "learning_rates.png",
        "examples_epoch0.png",
        "examples_epoch1.png",
    ):
        assert (folder / name).is_file(), name
    main(["report", str(run_folder), "--output", str(tmp_path / "out")])
    assert capsys.readouterr().out.strip() == str(tmp_path / "out" / "report.md")
    text = (tmp_path / "out" / "report.md").read_text()
    for name in CLASS_NAMES:
        assert f"| {name} | " in text
    assert "test/mAP_teacher" in text and "![Per-class test AP](test_ap.png)" in text
    # Thresholds and pseudo-label quality of the tested epoch, which the curves mark too.
    assert "Tested epoch (0-based): 1." in text
    assert "Thresholds and pseudo-label quality of epoch 1." in text
    for image in ("test_ap.png", "contexts.png", "examples_epoch1.png"):
        assert (tmp_path / "out" / image).stat().st_size > 1000


def test_report_command_names_a_folder_without_data(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["report", str(tmp_path)])
    assert f"{tmp_path}: no run report data" in capsys.readouterr().err


def test_report_with_another_logger_and_a_supervised_task(tmp_path, image_folders, tiny_clip_dir):
    config = fit_config(
        tmp_path,
        image_folders,
        tiny_clip_dir,
        logger={
            "class_path": "lightning.pytorch.loggers.CSVLogger",
            "init_args": {"save_dir": str(tmp_path)},
        },
        callbacks=[REPORT],
    )
    main(["fit", "--config", str(config), "--trainer.max_epochs=1"])
    [run] = (tmp_path / "lightning_logs").glob("version_*")
    data = json.loads((run / "report" / "data.json").read_text())
    assert list(data["test"]["per_class_ap"]) == [""]
    assert data["contexts"] is None and data["epochs"][0].get("thresholds") is None
    assert not math.isnan(data["test"]["metrics"]["test/mAP"])
    assert write_report(run).read_text().startswith("# Run report")


def test_run_report_rejects_negative_options():
    from cssa_lightning.reporting.callbacks import RunReport

    with pytest.raises(ValueError, match="num_examples"):
        RunReport(num_examples=-1)


def test_curves_mark_the_warmup_end_and_the_tested_epoch():
    from cssa_lightning.reporting.report import figure_curves

    validation = [{"epoch": e, "val/mAP": 40.0 + e} for e in range(4)]
    epochs = [{"epoch": e, "pseudo/precision": 50.0} for e in range(4)]
    figure = figure_curves(epochs, validation, warmup_epochs=2, tested_epoch=3)
    for ax in figure.axes:
        marks = {line.get_label(): line.get_xdata()[0] for line in ax.lines}
        assert marks["warm-up end"] == 1.5  # between the last warm-up epoch and the next
        assert marks["tested (epoch 3)"] == 3
    unmarked = figure_curves(epochs, validation)
    assert all(len(ax.lines) <= 2 for ax in unmarked.axes)


def test_class_names_in_the_report_figures_are_legible():
    from cssa_lightning.reporting.report import (
        LABEL_SIZE,
        figure_affinity,
        figure_pseudo_labels,
        figure_test_ap,
    )

    rng = np.random.default_rng(0)
    names = [f"class{i}" for i in range(48)]
    priors = list(rng.uniform(0.01, 0.3, 48))
    figures = [
        figure_test_ap(names, priors, {"": list(rng.uniform(0, 100, 48))}),
        figure_pseudo_labels(
            names, priors, list(rng.uniform(0.3, 0.9, 48)), [50.0] * 48, [40.0] * 48, epoch=3
        ),
        figure_affinity(names, rng.uniform(0, 1, (48, 48)), list(rng.integers(0, 8, 48))),
    ]
    for fig in figures:
        texts = [
            t for t in fig.findobj(matplotlib.text.Text) if any(n in t.get_text() for n in names)
        ]
        assert texts and min(t.get_fontsize() for t in texts) >= LABEL_SIZE >= 8
    # The scatter names the classes with the most unusual thresholds only (no overlapping wall).
    annotations = [t for t in figures[1].axes[0].texts if t.get_text() in names]
    assert 0 < len(annotations) <= 12
