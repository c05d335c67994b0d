"""``cssa predict`` on bare images with a trained checkpoint."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import torch

from cssa_lightning.commands.entry import main
from cssa_lightning.commands.predict import ImageFiles, list_images, predict
from cssa_lightning.commands.trained import find_checkpoint, load_trained


def read_outputs(out):
    with (out / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return rows, lines


def reference_probs(checkpoint, paths):
    task, preprocessing = load_trained(checkpoint)
    dataset = ImageFiles(paths, preprocessing.transform(), preprocessing.image_size)
    images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    with torch.no_grad():
        return task, task.evaluation_scores(images)


def test_predict_folder_writes_csv_and_jsonl(tmp_path, bare_images, trained_cssa, capsys):
    out = tmp_path / "out"
    main(
        [
            "predict",
            "--ckpt_path",
            str(trained_cssa),
            "--images",
            str(bare_images),
            "--output",
            str(out),
            "--batch_size",
            "4",
        ]
    )
    rows, lines = read_outputs(out)
    # The corrupt image is reported and skipped; the ten others are labeled.
    assert len(rows) == len(lines) == 10
    skipped = list(csv.DictReader((out / "skipped.csv").open()))
    assert [s["path"] for s in skipped] == [str(bare_images / "broken.png")]
    assert "cannot read image" in skipped[0]["error"]
    captured = capsys.readouterr()
    printed = captured.out
    assert "1 unreadable images skipped" in printed and "thresholds: trained" in printed
    assert "Tip:" not in printed + captured.err  # no product advertisement
    # Nor hardware lines or transformers' weight-loading bar: the command's own lines only.
    assert "GPU available" not in captured.err and "Loading weights" not in captured.err
    # Probabilities of the student and the teacher, equal to the model's on the same images.
    paths = [bare_images / "sub" / p.name for p in sorted((bare_images / "sub").iterdir())]
    assert [line["path"] for line in lines] == [str(p) for p in paths]
    task, expected = reference_probs(trained_cssa, paths)
    student = torch.tensor([[line["student_probs"][c] for c in task.class_names] for line in lines])
    teacher = torch.tensor([[line["teacher_probs"][c] for c in task.class_names] for line in lines])
    torch.testing.assert_close(student, expected[""], atol=1e-5, rtol=0)
    torch.testing.assert_close(teacher, expected["_teacher"], atol=1e-5, rtol=0)
    # Labels: the teacher's probabilities at the trained thresholds (auto: the checkpoint has
    # them; 0.5 for a class without one), in CSV and JSONL alike.
    trained = torch.where(torch.isfinite(task.thresholds), task.thresholds.float(), 0.5)
    assert not torch.equal(trained, torch.full_like(trained, 0.5))
    for row, line, probs in zip(rows, lines, expected["_teacher"], strict=True):
        wanted = [
            c
            for c, p, t in zip(task.class_names, probs.tolist(), trained.tolist(), strict=True)
            if p >= t
        ]
        assert line["labels"] == wanted
        assert row["labels"] == "|".join(wanted)
        assert float(row["teacher:red"]) == pytest.approx(line["teacher_probs"]["red"], abs=1e-6)


def test_predict_refuses_to_overwrite(tmp_path, bare_images, trained_cssa):
    out = tmp_path / "out"
    predict(str(trained_cssa), str(bare_images), str(out), progress_bar=False)
    with pytest.raises(FileExistsError, match="--overwrite"):
        predict(str(trained_cssa), str(bare_images), str(out), progress_bar=False)
    writer = predict(
        str(trained_cssa), str(bare_images), str(out), overwrite=True, progress_bar=False
    )
    assert writer.written == 10


def test_image_lists(tmp_path, bare_images):
    images = sorted((bare_images / "sub").iterdir())
    listing = tmp_path / "list.txt"
    listing.write_text("# my images\n" + "\n".join(f"photos/sub/{p.name}" for p in images[:3]))
    assert list_images(listing) == images[:3]
    table = tmp_path / "list.csv"
    table.write_text("path,labels\n" + "".join(f"photos/sub/{p.name},red\n" for p in images[:2]))
    assert list_images(table) == images[:2]
    assert len(list_images(bare_images)) == 11
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="lists no image"):
        list_images(empty)
    table.write_text("file,labels\n")
    with pytest.raises(ValueError, match="'path' column"):
        list_images(table)


def test_thresholds_trained_and_val_f1(tmp_path, bare_images, trained_cssa, image_folders):
    task, expected = reference_probs(trained_cssa, sorted((bare_images / "sub").iterdir()))
    trained = predict(
        str(trained_cssa), str(bare_images), str(tmp_path / "a"), "trained", progress_bar=False
    )
    finite = torch.isfinite(task.thresholds)
    torch.testing.assert_close(trained.thresholds[finite], task.thresholds[finite].float())
    assert torch.all(trained.thresholds[~finite] == 0.5)
    _, lines = read_outputs(tmp_path / "a")
    for line, probs in zip(lines, expected["_teacher"], strict=True):
        assert line["labels"] == [
            c for c, p, t in zip(task.class_names, probs, trained.thresholds, strict=True) if p >= t
        ]
    f1 = predict(
        str(trained_cssa),
        str(bare_images),
        str(tmp_path / "b"),
        "val-f1",
        val_source=str(image_folders["val"]),
        scores="student",
        progress_bar=False,
    )
    assert f1.decide_by == "probs"
    assert torch.isfinite(f1.thresholds).all() and not torch.equal(
        f1.thresholds, torch.full_like(f1.thresholds, 0.5)
    )
    with pytest.raises(ValueError, match="needs --val_source"):
        predict(str(trained_cssa), str(bare_images), str(tmp_path / "c"), "val-f1")


def test_auto_thresholds_are_the_trained_ones_else_one_half(trained_cssa, tiny_clip_dir):
    from cssa_lightning import MultiLabelTask
    from cssa_lightning.commands.predict import resolve_thresholds

    task, _ = load_trained(trained_cssa)
    assert resolve_thresholds(task, "auto") == "trained"
    supervised = MultiLabelTask(["a", "b"], clip_checkpoint=str(tiny_clip_dir))
    assert resolve_thresholds(supervised, "auto") == "0.5"
    assert resolve_thresholds(task, "0.3") == "0.3"


def predict_error(ckpt_path, images, out, capsys) -> str:
    """The last stderr line of a ``cssa predict`` that must exit with status 1."""
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "predict",
                "--ckpt_path",
                str(ckpt_path),
                "--images",
                str(images),
                "--output",
                str(out),
                "--no_progress_bar",
            ]
        )
    assert exit_info.value.code == 1
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_a_folder_without_a_readable_image_fails(tmp_path, trained_cssa, capsys):
    folder = tmp_path / "broken"
    folder.mkdir()
    for name in ("a.png", "b.jpg"):
        (folder / name).write_bytes(b"not an image")
    out = tmp_path / "out"
    assert predict_error(trained_cssa, folder, out, capsys) == (
        f"error: no image of --images {folder} could be read (2 skipped, listed in "
        f"{out / 'skipped.csv'})"
    )


def test_predict_errors_are_one_line(tmp_path, bare_images, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--ckpt_path", str(tmp_path / "no.ckpt"), "--images", str(bare_images)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err == f"error: checkpoint {tmp_path / 'no.ckpt'} does not exist"


def test_f1_thresholds_are_f1_optimal(tmp_path, trained_cssa, image_folders):
    # Each class's val-f1 threshold gives an F1 at least that of 0.5 on the val images.
    task, preprocessing = load_trained(trained_cssa)
    from cssa_lightning.commands.predict import choose_thresholds
    from cssa_lightning.data.records import build_record_table, read_source

    thresholds = choose_thresholds(
        task, "val-f1", "probs", str(image_folders["val"]), preprocessing, 8
    )
    table = build_record_table(read_source(image_folders["val"]), task.class_names)
    targets = np.asarray(table.with_format("numpy")["target"], dtype=bool).reshape(-1, 6)
    _, probs = reference_probs(trained_cssa, [r["path"] for r in table["image"]])
    probs = probs[""].numpy()

    def f1(k, t):
        predicted = probs[:, k] >= t
        tp = (predicted & targets[:, k]).sum()
        return 2 * tp / max(predicted.sum() + targets[:, k].sum(), 1)

    for k in range(6):
        assert f1(k, float(thresholds[k])) >= f1(k, 0.5) - 1e-9


def test_predict_reads_an_export_directory_and_a_run_folder(
    tmp_path, bare_images, trained_cssa, capsys
):
    from cssa_lightning.commands.export import export

    exported = export(str(trained_cssa), str(tmp_path / "exported"), onnx=False)
    capsys.readouterr()
    by_checkpoint = predict(
        str(trained_cssa), str(bare_images), str(tmp_path / "a"), progress_bar=False
    )
    by_export = predict(str(exported), str(bare_images), str(tmp_path / "b"), progress_bar=False)
    # The run folder the fixture trained in: its only checkpoint.
    run_folder = next(p for p in trained_cssa.parents if p.name.startswith("trained"))
    assert find_checkpoint(run_folder) == trained_cssa
    by_folder = predict(str(run_folder), str(bare_images), str(tmp_path / "c"), progress_bar=False)
    assert by_checkpoint.written == by_export.written == by_folder.written == 10
    rows_a, lines_a = read_outputs(tmp_path / "a")
    rows_b, lines_b = read_outputs(tmp_path / "b")
    rows_c, _ = read_outputs(tmp_path / "c")
    assert rows_c == rows_a
    # The export holds the teacher and its trained thresholds: the same labels, the teacher's
    # probabilities only.
    assert [line["labels"] for line in lines_b] == [line["labels"] for line in lines_a]
    assert set(lines_b[0]) == {"path", "labels", "teacher_probs"}
    for line_a, line_b in zip(lines_a, lines_b, strict=True):
        for name, p in line_a["teacher_probs"].items():
            assert line_b["teacher_probs"][name] == pytest.approx(p, abs=1e-5)
    with pytest.raises(ValueError, match="holds the teacher only"):
        predict(str(exported), str(bare_images), str(tmp_path / "d"), scores="student")


def test_a_run_folder_gives_its_best_checkpoint_else_its_last(tmp_path):
    def write(path, best=None, monitor="val/mAP_teacher", age=0):
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {"monitor": monitor, "best_model_path": best}
        torch.save(
            {"state_dict": {}, "callbacks": {"ModelCheckpoint{'monitor': 'x'}": state}}, path
        )
        os.utime(path, (1_000_000 + age, 1_000_000 + age))

    run = tmp_path / "run"
    checkpoints = run / "cssa-lightning" / "abc" / "checkpoints"
    write(checkpoints / "epoch=1.ckpt", age=1)
    write(checkpoints / "epoch=3.ckpt", age=2)
    # Recorded best under the folder's old location (it was moved): found beside the newest.
    write(checkpoints / "last.ckpt", best="/elsewhere/checkpoints/epoch=1.ckpt", age=3)
    assert find_checkpoint(run) == checkpoints / "epoch=1.ckpt"
    write(checkpoints / "last.ckpt", best=None, monitor=None, age=3)  # nothing monitored
    assert find_checkpoint(run) == checkpoints / "last.ckpt"
    (checkpoints / "last.ckpt").unlink()
    with pytest.raises(
        ValueError, match="holds 2 checkpoints and none is recorded as best or last"
    ):
        find_checkpoint(run)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="is a folder with no checkpoint"):
        find_checkpoint(empty)
    assert find_checkpoint(checkpoints / "epoch=3.ckpt") == checkpoints / "epoch=3.ckpt"


def test_predict_options_from_a_config_file_with_the_command_line_winning(
    tmp_path, bare_images, trained_cssa, capsys
):
    import yaml

    config = tmp_path / "predict.yaml"
    options = {"ckpt_path": str(trained_cssa), "images": str(bare_images), "batch_size": 3}
    # devices as YAML writes it, an int (it crashed the run when only strings were parsed).
    config.write_text(yaml.safe_dump({**options, "precision": "bf16-mixed", "devices": 1}))
    with pytest.raises(SystemExit) as done:
        main(["predict", "--config", str(config), "--batch_size", "5", "--print_config"])
    assert done.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["batch_size"] == 5 and printed["precision"] == "bf16-mixed"
    assert printed["ckpt_path"] == str(trained_cssa)  # required, given by the file
    assert printed["devices"] == 1
    # A run from the file alone, in bf16 autocast: the same labels' files, probabilities close.
    out = tmp_path / "out"
    main(["predict", "--config", str(config), "--output", str(out), "--no_progress_bar"])
    rows, lines = read_outputs(out)
    assert len(rows) == 10
    _, scores = reference_probs(trained_cssa, [bare_images / line["path"] for line in lines])
    probs = torch.tensor(
        [[line["teacher_probs"][c] for c in lines[0]["teacher_probs"]] for line in lines]
    )
    assert (probs - scores["_teacher"]).abs().max() < 0.05  # bf16 forward
    # An option the command does not have: a usage error naming the file and the key.
    config.write_text("batchsize: 3\n")
    with pytest.raises(SystemExit) as bad:
        main(["predict", "--config", str(config), "--ckpt_path", "x", "--images", "y"])
    assert bad.value.code == 2
    assert f"--config {config}: cssa predict has no option 'batchsize'" in capsys.readouterr().err
