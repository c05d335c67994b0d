"""Errors reach the user as one line; short runs and logger-less configs work."""

from __future__ import annotations

import pytest
import torch

from cssa_lightning.commands.entry import main, user_error
from cssa_lightning.methods.multilabel import one_cycle_phases

from .conftest import fit_config
from .test_cli import RecordMetrics


def run_main(args, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code, capsys.readouterr().err


def test_data_error_in_datamodule_init_is_one_line(tmp_path, image_folders, tiny_clip_dir, capsys):
    config = fit_config(tmp_path, image_folders, tiny_clip_dir)
    bad = tmp_path / "bad.csv"
    bad.write_text("path,labels\nmissing.png,red\n")
    code, err = run_main(
        ["fit", "--config", str(config), f"--data.init_args.train_source={bad}"], capsys
    )
    assert code == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1] == (
        f"error: {bad}:2: image {tmp_path / 'missing.png'} does not exist "
        "(1 of 1 listed images are missing)"
    )
    assert "Traceback" not in err and "Union subtypes" not in err


def test_data_error_in_setup_is_one_line(tmp_path, image_folders, tiny_clip_dir, capsys):
    config = fit_config(tmp_path, image_folders, tiny_clip_dir)
    bad = tmp_path / "test" / "metadata.jsonl"
    bad.parent.mkdir()
    bad.write_text('{"file_name": "x.png"}\n')
    code, err = run_main(
        ["fit", "--config", str(config), f"--data.init_args.test_source={bad.parent}"], capsys
    )
    assert code == 1
    assert err.strip().splitlines()[-1] == (
        f"error: {bad}:1: expected an object with 'file_name' and 'labels'"
    )


def test_other_errors_keep_their_traceback():
    try:
        raise RuntimeError("a bug")
    except RuntimeError as error:
        assert user_error(error) is None
    # A ValueError raised outside this package is not taken for a user error.
    try:
        int("x")
    except ValueError as error:
        assert user_error(error) is None


def test_loader_worker_error_text_is_reduced_to_its_message():
    message = (
        "Caught ValueError in DataLoader worker process 0.\nOriginal Traceback (most recent "
        'call last):\n  File "/x/cssa_lightning/data/records.py", line 170, in load_image\n'
        "ValueError: cannot read image a.png: truncated"
    )
    assert user_error(ValueError(message)) == "cannot read image a.png: truncated"


@pytest.mark.parametrize("pct_start", [0.05, 0.2, 0.3, 0.5, 0.95])
@pytest.mark.parametrize("total", [1, 2, 3, 4, 5, 7, 10, 33])
def test_one_cycle_phases_never_divide_by_zero(total, pct_start):
    steps, pct = one_cycle_phases(total, pct_start)
    assert steps >= total
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=0.1, total_steps=steps, pct_start=pct
    )
    for _ in range(total):
        optimizer.step()
        scheduler.step()
    # Long runs keep the configured schedule exactly.
    assert one_cycle_phases(1000, pct_start) == (1000, pct_start)


def test_five_steps_without_logger_and_with_lr_monitor(tmp_path, image_folders, tiny_clip_dir):
    config = fit_config(
        tmp_path,
        image_folders,
        tiny_clip_dir,
        logger=False,
        callbacks=[
            {"class_path": "tests.test_cli.RecordMetrics"},
            {
                "class_path": "lightning.pytorch.callbacks.LearningRateMonitor",
                "init_args": {"logging_interval": "epoch"},
            },
        ],
    )
    main(["fit", "--config", str(config), "--trainer.max_steps=5", "--test_after_fit=false"])
    assert RecordMetrics.trainer.global_step == 5


def test_latin1_csv_is_reported_with_its_file_and_line(
    tmp_path, image_folders, tiny_clip_dir, capsys
):
    config = fit_config(tmp_path, image_folders, tiny_clip_dir)
    image = next(iter(sorted(image_folders["train"].rglob("*.png"))))
    bad = tmp_path / "latin1.csv"
    bad.write_bytes(f"path,labels\n{image},caf\xe9\n".encode("latin-1"))
    code, err = run_main(
        ["fit", "--config", str(config), f"--data.init_args.train_source={bad}"], capsys
    )
    assert code == 1
    assert err.strip().splitlines()[-1] == (
        f"error: {bad}:2: not valid UTF-8 (byte 0xe9; Latin-1 or another legacy encoding?); "
        "save the file as UTF-8"
    )


def test_a_mistyped_clip_is_one_line_naming_the_packaged_one(
    tmp_path, image_folders, tiny_clip_dir, capsys, monkeypatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = fit_config(tmp_path, image_folders, tiny_clip_dir)
    code, err = run_main(
        ["fit", "--config", str(config), "--model.init_args.clip_checkpoint=tiny-clipp"], capsys
    )
    assert code == 1
    assert err.strip().splitlines()[-1] == (
        "error: CLIP checkpoint 'tiny-clipp' not found; did you mean the packaged 'tiny-clip'?"
    )


def test_the_nan_guard_stop_is_one_line(tmp_path, image_folders, tiny_clip_dir, capsys):
    from .test_bad_inputs import checkpointed_config

    config = checkpointed_config(
        tmp_path, image_folders, tiny_clip_dir, "tests.test_bad_inputs.NaNAtStep"
    )
    code, err = run_main(["fit", "--config", str(config)], capsys)
    assert code == 1 and "Traceback" not in err
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith(
            "error: non-finite training loss nan at step 2 (epoch 0, batch 2): train/loss_sup = nan"
        )
    )


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        (
            "--model.init_args.consistency_wieght=0.3",
            "error: --model.consistency_wieght: CSSATask has no option 'consistency_wieght'; "
            "did you mean consistency_weight, consistency_target, use_consistency? "
            "all: cssa fit --model.help CSSATask",
        ),
        (  # an abbreviation counts as close
            "--model.learning_rate=0.1",
            "error: --model.learning_rate: CSSATask has no option 'learning_rate'; "
            "did you mean lr? all: cssa fit --model.help CSSATask",
        ),
        (
            "--model.init_args.lr=fast",
            "error: --model.lr (CSSATask): Expected a <class 'float'>. Got value: fast",
        ),
        (  # a flat name of 0.2 names its group's option
            "--model.init_args.alignment_weight=0.3",
            "error: --model.alignment_weight: CSSATask has no option 'alignment_weight' since "
            "0.3.0; it is --model.alignment.weight (in a config: alignment: {weight: ...})",
        ),
        (
            "--data.init_args.batchsize=4",
            "error: --data.batchsize: MultiLabelDataModule has no option 'batchsize'; "
            "did you mean eval_batch_size, labeled_batch_size, unlabeled_batch_size? "
            "all: cssa fit --data.help MultiLabelDataModule",
        ),
    ],
)
def test_an_unknown_option_or_bad_value_is_one_line_with_the_closest_names(
    tmp_path, image_folders, tiny_clip_dir, capsys, option, expected
):
    config = fit_config(tmp_path, image_folders, tiny_clip_dir, task="cssa_lightning.CSSATask")
    code, err = run_main(["fit", "--config", str(config), option], capsys)
    assert code == 2
    assert err.strip() == expected  # the only line: no usage, no union-type report
