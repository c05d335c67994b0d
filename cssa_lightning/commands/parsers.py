"""The argument parsers of ``cssa predict`` and ``cssa export``, apart from the commands.

Only ``argparse``: ``cssa predict --help`` and argument mistakes answer without importing torch,
Lightning or transformers (:mod:`cssa_lightning.commands.entry` parses with these before it imports
the command's module).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def predict_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cssa predict",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Label images with a trained checkpoint: writes predictions.csv and "
        "predictions.jsonl (path, predicted labels, per-class probabilities).",
    )
    parser.add_argument(
        "--ckpt_path",
        required=True,
        help="A checkpoint written by cssa fit, a run folder (its best checkpoint), or a "
        "directory written by cssa export.",
    )
    parser.add_argument(
        "--images",
        required=True,
        help="A folder (searched recursively), a text file with one image path per line, or a "
        "CSV with a 'path' column; relative paths are relative to the list's folder.",
    )
    parser.add_argument("--output", default="predictions", help="Output folder.")
    parser.add_argument(
        "--thresholds",
        default="auto",
        help="Per-class decision thresholds: 'auto' ('trained' when the checkpoint "
        "has them, else 0.5), 'trained' (the thresholds a mean-teacher model learned for its "
        "pseudo-labels), 'val-f1' (F1-optimal per class on --val_source), or one number for "
        "every class.",
    )
    parser.add_argument(
        "--val_source",
        help="Labeled images for --thresholds val-f1 (an image folder with metadata.jsonl or "
        "a CSV with path,labels). Use validation images, never the test set.",
    )
    parser.add_argument(
        "--scores",
        choices=["auto", "student", "teacher"],
        default="auto",
        help="Which probabilities decide the labels: the EMA teacher's when the model has one "
        "(auto), or the student's. Both are written.",
    )
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--num_workers", type=int, default=0)
    parser.add_argument("--accelerator", default="auto", help="Lightning accelerator.")
    parser.add_argument(
        "--devices",
        type=devices_value,
        default=1,
        help="Devices per node: a count, 'auto', or a list such as '0,1'. Above 1, one process "
        "per device labels its share of the images and the first merges the files.",
    )
    parser.add_argument(
        "--num_nodes",
        type=int,
        default=1,
        help="Nodes (start the same command on each, e.g. with torchrun or srun); --output must "
        "be a folder every node sees.",
    )
    parser.add_argument(
        "--precision",
        default="32-true",
        help="Lightning precision of the forward pass (e.g. bf16-mixed, 16-mixed on a GPU).",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="Replace existing prediction files."
    )
    parser.add_argument(
        "--no_progress_bar", action="store_true", help="Do not show the progress bar."
    )
    return parser


def devices_value(value: str) -> int | str:
    """``--devices``: a count, ``auto`` or Lightning's device list such as ``0,1``."""
    return int(value) if value.strip().isdigit() else value


def export_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cssa export",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Write a trained checkpoint as a self-contained directory (CLIP via "
        "save_pretrained, heads, class names, thresholds, preprocessing) and ONNX. Load it with "
        "cssa_lightning.commands.export.load_exported(DIR), or run model.onnx with onnxruntime.",
    )
    parser.add_argument(
        "--ckpt_path",
        required=True,
        help="A checkpoint written by cssa fit, or a run folder (its best checkpoint).",
    )
    parser.add_argument("--output", required=True, help="The export directory.")
    parser.add_argument(
        "--weights",
        choices=["auto", "student", "teacher"],
        default="auto",
        help="Which network to export: the EMA teacher when the model has one (auto).",
    )
    parser.add_argument(
        "--thresholds",
        default="auto",
        help="Thresholds stored with the model: 'auto' (the trained ones when the "
        "checkpoint has them, else 0.5), 'trained', 'val-f1' or a number (as in cssa predict).",
    )
    parser.add_argument("--val_source", help="Labeled images for --thresholds val-f1.")
    parser.add_argument("--no_onnx", action="store_true", help="Skip model.onnx.")
    parser.add_argument("--overwrite", action="store_true", help="Write into a non-empty folder.")
    parser.add_argument(
        "--push_to_hub",
        metavar="REPO_ID",
        help="Then upload the directory to this Hugging Face Hub model repository (created if "
        "needed; log in with `hf auth login` or set HF_TOKEN). "
        "ExportedClassifier.from_pretrained(REPO_ID) loads it.",
    )
    parser.add_argument(
        "--private", action="store_true", help="Create the --push_to_hub repository private."
    )
    return parser


PARSERS = {"predict": predict_parser, "export": export_parser}


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="A YAML file of these options (their names without '--', e.g. 'batch_size: 128'); "
        "options given on the command line win.",
    )
    parser.add_argument(
        "--print_config", action="store_true", help="Print the resolved options as YAML, exit."
    )


def parse_options(command: str, args: Sequence[str] | None = None) -> argparse.Namespace:
    """The options of ``cssa predict`` / ``cssa export``: the command line over a ``--config``
    YAML file over the defaults. ``--print_config`` prints them (a file ``--config`` takes)
    and exits. A config that is not a mapping of the command's options is a usage error
    naming the file and the option."""
    args = list(sys.argv[1:] if args is None else args)
    parser = PARSERS[command]()
    add_config_arguments(parser)
    config_only = argparse.ArgumentParser(add_help=False)
    config_only.add_argument("--config")
    path = config_only.parse_known_args(args)[0].config
    if path:
        values = read_config(parser, path)
        for action in parser._actions:
            if action.dest in values:
                action.required = False  # given by the file
        parser.set_defaults(**values)
    options = parser.parse_args(args)
    if options.print_config:
        import yaml

        resolved = {k: v for k, v in vars(options).items() if k not in ("config", "print_config")}
        print(yaml.safe_dump(resolved, sort_keys=False), end="")
        raise SystemExit(0)
    return options


def read_config(parser: argparse.ArgumentParser, path: str) -> dict:
    import yaml

    try:
        values = yaml.safe_load(Path(path).expanduser().read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        parser.error(f"--config {path}: cannot be read ({str(error).splitlines()[0]})")
    values = {} if values is None else values
    if not isinstance(values, dict):
        parser.error(f"--config {path}: expected a mapping of options, got {type(values).__name__}")
    known = {a.dest for a in parser._actions} - {"help", "config", "print_config"}
    for key in values:
        if str(key).replace("-", "_") not in known:
            parser.error(
                f"--config {path}: {parser.prog} has no option {key!r}; its options: "
                + ", ".join(sorted(known))
            )
    return {str(k).replace("-", "_"): v for k, v in values.items()}
