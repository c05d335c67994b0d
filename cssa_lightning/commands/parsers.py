"""The argument parsers of ``cssa predict`` and ``cssa export``, apart from the commands.

Only ``argparse``: ``cssa predict --help`` and argument mistakes answer without importing torch,
Lightning or transformers (:mod:`cssa_lightning.commands.entry` parses with these before it imports
the command's module).
"""

from __future__ import annotations

import argparse


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
        "--overwrite", action="store_true", help="Replace existing prediction files."
    )
    parser.add_argument(
        "--no_progress_bar", action="store_true", help="Do not show the progress bar."
    )
    return parser


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
