"""Speed benchmark: training step (CSSA vs CAP), MFU, loader, mAP and start-up times.

    python benchmarks/speed.py                       # CPU: a tiny CLIP, a few minutes
    python benchmarks/speed.py --device cuda         # GPU: ViT-B/16 CLIP at 224 px, bf16

Measures, side by side on one machine:

- **step**: wall time of a full training step (forward, backward, optimizer, EMA teacher) of
  CSSA (the model of ``configs/ssmll.yaml`` + ``coco.yaml``) and CAP (+ ``cap.yaml``) after warm-up, on
  in-memory batches (no loader in the way); images/s; model FLOPs per step counted by
  ``torch.utils.flop_counter`` and the MFU against the card's dense bf16 peak. On ``cuda`` the
  CLIP is ViT-B/16 sized: ``CLIPConfig`` defaults with 16-pixel patches, the shape of
  ``openai/clip-vit-base-patch16``, random weights, built offline.
- **loader**: unlabeled images/s (weak + strong view at 224 px) of one loader worker (one
  thread) on generated 640x480 JPEGs, decoded from the files vs from the prepared cache
  (:mod:`cssa_lightning.data.prepare`), and the time to prepare the cache.
- **map**: exact mAP at COCO val2014 scale (40,504 x 80) by ``MultiLabelMetrics`` against
  torchmetrics' ``MultilabelAveragePrecision`` and scikit-learn's ``average_precision_score``.
- **startup**: ``cssa --help`` wall time.

Writes ``benchmarks/results/speed.json`` (one entry per device, merged) and ``docs/speed.md``.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "speed.json"
DOC = ROOT / "docs" / "speed.md"

# Dense bf16 tensor-core peaks (FLOP/s) by card name, for the MFU.
PEAK_BF16 = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}

SIZES = {
    # tiny: a CLIP small enough for a CPU; vit-b16: ViT-B/16 at 224 with the configs' batches
    # (on a CPU, give it small batches: --labeled-batch 2 --unlabeled-batch 4).
    "tiny": dict(
        image_size=64,
        clip=dict(image_size=64, patch_size=8, width=64, layers=2, heads=2, embed_dim=64),
        labeled_batch=4,
        unlabeled_batch=12,
        steps=8,
        warmup_steps=3,
        classes=80,
    ),
    "vit-b16": dict(
        image_size=224,
        clip=None,
        labeled_batch=8,
        unlabeled_batch=56,
        steps=30,
        warmup_steps=8,
        classes=80,
    ),
}


def median_time(function: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """Median wall time and median CPU time of this process (all its threads), in seconds.

    On a machine shared with other jobs the wall time grows with their load; the CPU time
    does not (for single-threaded work it is the time the work itself needs).
    """
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        function()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


# -- mAP --------------------------------------------------------------------------------------
def bench_map(device: str, num_images: int, num_classes: int, repeats: int) -> dict[str, Any]:
    from sklearn.metrics import average_precision_score
    from torchmetrics.classification import MultilabelAveragePrecision

    from cssa_lightning.methods.metrics import MultiLabelMetrics

    rng = np.random.default_rng(0)
    targets = (rng.random((num_images, num_classes)) < 0.04).astype(np.int64)
    # Scores rounded to 1e-3: many ties, as sigmoid outputs in bf16 have.
    scores = np.round(np.clip(targets * 0.3 + rng.random(targets.shape), 0, 1), 3)
    scores = scores.astype(np.float32)
    s, t = torch.from_numpy(scores).to(device), torch.from_numpy(targets).to(device)
    sync = torch.cuda.synchronize if device == "cuda" else lambda: None
    ours = MultiLabelMetrics(num_classes).to(device)
    reference = MultilabelAveragePrecision(num_labels=num_classes, average="macro").to(device)

    def run(metric):
        def call():
            metric.reset()
            metric.update(s, t)
            value = metric.compute()
            sync()
            return value

        return call

    run(ours)()  # warm-up
    ours_s, ours_cpu = median_time(run(ours), repeats)
    per_class_ours = ours.average_precision_per_class().cpu().numpy() / 100
    torchmetrics_s, torchmetrics_cpu = median_time(run(reference), max(1, repeats // 2))
    sklearn_s, sklearn_cpu = median_time(
        lambda: average_precision_score(targets, scores, average=None), max(1, repeats // 2)
    )
    per_class = average_precision_score(targets, scores, average=None)
    return {
        "images": num_images,
        "classes": num_classes,
        "ours_s": round(ours_s, 4),
        "ours_cpu_s": round(ours_cpu, 4),
        "torchmetrics_s": round(torchmetrics_s, 4),
        "torchmetrics_cpu_s": round(torchmetrics_cpu, 4),
        "sklearn_s": round(sklearn_s, 4),
        "sklearn_cpu_s": round(sklearn_cpu, 4),
        "max_ap_diff_vs_sklearn": float(np.abs(per_class_ours - per_class).max()),
        "repeats": repeats,
    }


# -- loader -----------------------------------------------------------------------------------
def write_jpegs(folder: Path, count: int) -> Path:
    """``count`` 640x480 JPEGs of smooth random content, and their ``metadata.jsonl``."""
    from PIL import Image

    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True)
    lines = []
    for i in range(count):
        small = Image.fromarray((rng.random((12, 16, 3)) * 255).astype(np.uint8))
        image = np.asarray(small.resize((640, 480), Image.Resampling.BICUBIC)).copy()
        image += rng.integers(0, 12, image.shape, dtype=np.uint8)  # texture, as photos have
        Image.fromarray(image).save(folder / "images" / f"{i:05d}.jpg", quality=90)
        lines.append(json.dumps({"file_name": f"images/{i:05d}.jpg", "labels": ["a"]}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "classes.txt").write_text("a\nb\n")
    return folder


def bench_loader(num_images: int, image_size: int, batch_size: int) -> dict[str, Any]:
    import cv2
    from torch.utils.data import default_collate

    from cssa_lightning.data.datamodule import MultiLabelDataModule, UnlabeledImages

    # One loader worker: one thread for torch and OpenCV.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    results: dict[str, Any] = {"images": num_images, "source": "640x480 JPEG", "size": image_size}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            source = write_jpegs(Path(tmp) / "data", num_images)
            results["generate_s"] = round(time.perf_counter() - start, 2)
            for name, cache in [("uncached", None), ("cached", str(Path(tmp) / "cache"))]:
                datamodule = MultiLabelDataModule(
                    str(source), labeled_ratio=0.5, image_size=image_size, image_cache=cache
                )
                start = time.perf_counter()
                datamodule.prepare_data()
                datamodule.setup("fit")
                if cache:
                    results["prepare_s"] = round(time.perf_counter() - start, 2)
                _, weak, strong = datamodule._transforms()
                indices = np.arange(num_images)  # every image, as one worker's share
                dataset = UnlabeledImages(datamodule.train_table, indices, weak, strong)

                def epoch(dataset=dataset):
                    for first in range(0, len(dataset), batch_size):
                        last = min(first + batch_size, len(dataset))
                        default_collate([dataset[i] for i in range(first, last)])

                wall, cpu = median_time(epoch, 1)
                results[f"{name}_images_per_s"] = round(len(dataset) / wall, 1)
                results[f"{name}_images_per_cpu_s"] = round(len(dataset) / cpu, 1)
    finally:
        torch.set_num_threads(threads)
    results["speedup"] = round(
        results["cached_images_per_cpu_s"] / results["uncached_images_per_cpu_s"], 2
    )
    return results


# -- training step ----------------------------------------------------------------------------
def build_clip(out: Path, sizes: dict[str, Any]) -> Path:
    from transformers import CLIPConfig, CLIPModel

    from cssa_lightning.synthetic.tiny_clip import (
        build_clip_tokenizer,
        save_clip_checkpoint,
        tiny_clip_config,
    )

    tokenizer = build_clip_tokenizer([f"class{k}" for k in range(sizes["classes"])] + PROMPT_WORDS)
    if sizes["clip"] is None:
        # openai/clip-vit-base-patch16's shape: CLIPConfig defaults with 16-pixel patches. The
        # special token ids follow the tokenizer built here.
        ids = dict(bos_token_id=0, eos_token_id=1, pad_token_id=1)
        config = CLIPConfig(text_config=ids, vision_config=dict(patch_size=16, image_size=224))
    else:
        config = tiny_clip_config(len(tokenizer), **sizes["clip"])
    torch.manual_seed(0)
    save_clip_checkpoint(CLIPModel(config), tokenizer, out, sizes["image_size"])
    return out


PROMPT_WORDS = ["a", "photo", "picture", "of", "the"]


def model_task(config: Sequence[str], clip_dir: Path, classes: int) -> tuple[type, dict[str, Any]]:
    """The model class and ``init_args`` of shipped configs combined in order, on the offline
    CLIP, full step at once. As in the CLI, a later file's ``class_path`` replaces the class
    and keeps only the options the new class accepts (``cap.yaml``: ``MeanTeacherTask``)."""
    from cssa_lightning import CSSATask

    def accepted(cls: type) -> set[str]:
        return {
            name
            for klass in cls.__mro__
            if "__init__" in vars(klass)
            for name in inspect.signature(klass.__init__).parameters
        }

    task: type = CSSATask  # the class of ssmll.yaml
    options: dict[str, Any] = {}
    for name in config:  # later ones win
        model = yaml.safe_load((ROOT / "configs" / name).read_text()).get("model") or {}
        if model.get("class_path"):
            module, _, attribute = model["class_path"].rpartition(".")
            task = getattr(importlib.import_module(module), attribute)
            options = {k: v for k, v in options.items() if k in accepted(task)}
        options.update(model.get("init_args") or {})
    options.update(
        class_names=[f"class{k}" for k in range(classes)],
        clip_checkpoint=str(clip_dir),
        warmup_epochs=0,  # time the full step (with the unlabeled losses) from the first one
        calibrate_bias=False,  # needs real images; not part of the step
    )
    return task, options


class StepTimer:
    """A callback timing training steps from batch start to batch start (everything between)."""

    def __init__(self, warmup: int, flop_step: int, device: str):
        from lightning.pytorch import Callback

        timer = self

        class _Callback(Callback):
            def on_train_batch_start(self, trainer, module, batch, batch_idx):
                timer.mark(batch_idx)

            def on_train_end(self, trainer, module):
                timer.mark(None)

        self.callback = _Callback()
        self.warmup, self.flop_step, self.device = warmup, flop_step, device
        self.starts: dict[int | None, float] = {}
        self.cpu_starts: dict[int | None, float] = {}
        self.flops = 0
        self._counter = None

    def mark(self, batch_idx: int | None) -> None:
        from torch.utils.flop_counter import FlopCounterMode

        if self.device == "cuda":
            torch.cuda.synchronize()
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            self.flops = self._counter.get_total_flops()
            self._counter = None
        self.starts[batch_idx] = time.perf_counter()
        self.cpu_starts[batch_idx] = time.process_time()
        if batch_idx == self.flop_step:
            self._counter = FlopCounterMode(display=False)
            self._counter.__enter__()

    def step_seconds(self, cpu: bool = False) -> float:
        # Steps after warm-up, leaving out the FLOP-counted one (counting slows it).
        starts = self.cpu_starts if cpu else self.starts
        times = [
            starts[i + 1] - starts[i]
            for i in range(self.warmup, self.flop_step)
            if i in starts and i + 1 in starts
        ]
        return statistics.median(times)


def random_datamodule(sizes: dict[str, Any], device: str, steps: int):
    """In-memory batches on the device: the step is timed without any loader work."""
    from lightning.pytorch import LightningDataModule
    from lightning.pytorch.utilities import CombinedLoader
    from torch.utils.data import DataLoader, Dataset

    c, size = sizes["classes"], sizes["image_size"]
    lb, ub = sizes["labeled_batch"], sizes["unlabeled_batch"]
    generator = torch.Generator().manual_seed(0)

    def images(n: int) -> torch.Tensor:
        return torch.randn(n, 3, size, size, generator=generator).to(device)

    def targets(n: int) -> torch.Tensor:
        return (torch.rand(n, c, generator=generator) < 0.05).float().to(device)

    labeled = {"image": images(lb), "target": targets(lb), "index": torch.arange(lb)}
    unlabeled = {
        "image_weak": images(ub),
        "image_strong": images(ub),
        "target": targets(ub),
        "index": torch.arange(ub).to(device),
    }

    class Repeat(Dataset):
        def __init__(self, batch):
            self.batch = batch

        def __len__(self):
            return steps

        def __getitem__(self, i):
            return self.batch

    class RandomBatches(LightningDataModule):
        unlabeled_indices = np.arange(ub)

        def labeled_targets(self) -> np.ndarray:
            labels = (torch.rand(64, c, generator=torch.Generator().manual_seed(1)) < 0.05).float()
            return labels.numpy()

        def train_dataloader(self):
            loaders = {
                "labeled": DataLoader(Repeat(labeled), batch_size=None),
                "unlabeled": DataLoader(Repeat(unlabeled), batch_size=None),
            }
            return CombinedLoader(loaders, mode="max_size_cycle")

    return RandomBatches()


def bench_step(
    device: str,
    sizes: dict[str, Any],
    precision: str,
    compile_network: bool = False,
    repeats: int = 1,
) -> dict[str, Any]:
    from lightning.pytorch import Trainer

    results: dict[str, Any] = {
        "image_size": sizes["image_size"],
        "labeled_batch": sizes["labeled_batch"],
        "unlabeled_batch": sizes["unlabeled_batch"],
        "classes": sizes["classes"],
        "precision": precision,
        "compiled": compile_network,
    }
    steps = sizes["steps"] + sizes["warmup_steps"] + 2
    configs = {
        "cap": ("ssmll.yaml", "coco.yaml", "cap.yaml"),
        "cssa": ("ssmll.yaml", "coco.yaml"),
    }
    runs: dict[str, list[StepTimer]] = {name: [] for name in configs}
    with tempfile.TemporaryDirectory() as tmp:
        clip_dir = build_clip(Path(tmp) / "clip", sizes)
        for repeat in range(repeats):
            # Alternating order (CAP, CSSA, CSSA, CAP, ...): a drift in the machine's speed
            # during the run does not favour one method.
            for name in list(configs) if repeat % 2 == 0 else list(configs)[::-1]:
                torch.manual_seed(0)
                task_class, options = model_task(configs[name], clip_dir, sizes["classes"])
                task = task_class(**options, compile_network=compile_network)
                timer = StepTimer(sizes["warmup_steps"], steps - 1, device)
                trainer = Trainer(
                    accelerator=device,
                    devices=1,
                    precision=precision,
                    max_epochs=1,
                    logger=False,
                    enable_checkpointing=False,
                    enable_progress_bar=False,
                    enable_model_summary=False,
                    num_sanity_val_steps=0,
                    limit_val_batches=0,
                    callbacks=[timer.callback],
                    default_root_dir=tmp,
                )
                trainer.fit(task, datamodule=random_datamodule(sizes, device, steps))
                runs[name].append(timer)
                del task, trainer
    images = sizes["labeled_batch"] + sizes["unlabeled_batch"]
    for name, timers in runs.items():
        # The median over runs of each run's median step.
        seconds = statistics.median(timer.step_seconds() for timer in timers)
        flops = timers[0].flops
        results[name] = {
            "step_s": round(seconds, 5),
            "step_cpu_s": round(statistics.median(t.step_seconds(cpu=True) for t in timers), 5),
            "images_per_s": round(images / seconds, 1),
            "flops_per_step": flops,
            "tflops_per_s": round(flops / seconds / 1e12, 5),
        }
    results["repeats"] = repeats
    results["cssa_over_cap"] = round(results["cssa"]["step_s"] / results["cap"]["step_s"], 3)
    results["flops_cssa_over_cap"] = round(
        results["cssa"]["flops_per_step"] / results["cap"]["flops_per_step"], 3
    )
    return results


def peak_flops(device: str) -> tuple[str, float | None]:
    if device != "cuda":
        cpuinfo = Path("/proc/cpuinfo")
        for line in cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip(), None
        return platform.processor() or platform.machine(), None
    name = torch.cuda.get_device_name()
    for key in sorted(PEAK_BF16, key=len, reverse=True):
        if key in name:
            return name, PEAK_BF16[key]
    return name, None


# -- start-up ---------------------------------------------------------------------------------
def bench_startup(repeats: int) -> dict[str, Any]:
    import resource

    walls, cpus = [], []
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "cssa_lightning", "--help"],
            check=True,
            capture_output=True,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return {
        "cssa_help_s": round(statistics.median(walls), 2),
        "cssa_help_cpu_s": round(statistics.median(cpus), 2),
        "repeats": repeats,
    }


# -- report -----------------------------------------------------------------------------------
def render(results: dict[str, Any]) -> str:
    lines = [
        "# Speed",
        "",
        "Written by `benchmarks/speed.py` from `benchmarks/results/speed.json`; every figure",
        "comes from the command shown with it. Times are medians of repeated measurements on",
        "one machine; compare figures within one entry (same machine, same run).",
        "",
    ]
    for device in ("cpu", *sorted(set(results) - {"cpu", "cuda"}), "cuda"):
        entry = results.get(device)
        lines += [f"## {device.upper()}", ""]
        if entry is None:
            lines += [
                "Not measured yet: run `python benchmarks/speed.py --device cuda` on a GPU "
                "machine; it writes this section with the card's name.",
                "",
            ]
            continue
        machine, step = entry["machine"], entry["step"]
        lines += [
            f"Command: `{entry['command']}` ({entry['total_s']:.0f} s in all"
            + ("" if entry.get("complete", True) else "; interrupted, parts missing")
            + ").",
            f"Machine: {machine['device']}, {machine['cpus']} CPUs, torch {machine['torch']}"
            + (f"; {entry['note']}" if entry.get("note") else "")
            + ".",
            "",
        ]
        if step is not None:
            lines += _render_step(step)
        else:
            lines += ["Training step: not measured in this run.", ""]
        loader, metric = entry["loader"], entry["map"]
        if loader is not None:
            lines += _render_loader(loader)
        if metric is not None:
            lines += _render_map(metric)
        if entry["startup"]:
            startup = entry["startup"]
            lines += [
                f"`cssa --help` start-up: {startup['cssa_help_s']} s "
                f"({startup['cssa_help_cpu_s']} s of CPU).",
                "",
            ]
    return "\n".join(lines)


def _render_step(step: dict[str, Any]) -> list[str]:
    cap, cssa = step["cap"], step["cssa"]
    images = f"{step['labeled_batch']} + {step['unlabeled_batch']}"
    return [
        *_table(
            ("step", "CAP", "CSSA"),
            ("model", step["model"], step["model"]),
            ("images per step (labeled + unlabeled)", images, images),
            ("step time (s)", f"{cap['step_s']:.4f}", f"{cssa['step_s']:.4f}"),
            (
                "step CPU time (s, all threads)",
                f"{cap['step_cpu_s']:.4f}",
                f"{cssa['step_cpu_s']:.4f}",
            ),
            ("images/s", cap["images_per_s"], cssa["images_per_s"]),
            (
                "model GFLOP per step",
                f"{cap['flops_per_step'] / 1e9:.1f}",
                f"{cssa['flops_per_step'] / 1e9:.1f}",
            ),
            ("achieved TFLOP/s", f"{cap['tflops_per_s']:.4f}", f"{cssa['tflops_per_s']:.4f}"),
            ("MFU", _mfu(cap), _mfu(cssa)),
        ),
        f"CSSA / CAP step time: **{step['cssa_over_cap']}x** (goal <= 1.15x); in CPU time "
        f"{cssa['step_cpu_s'] / cap['step_cpu_s']:.3f}x; in model FLOPs "
        f"{cssa['flops_per_step'] / cap['flops_per_step']:.3f}x"
        + (f" (median of {step['repeats']} fits per method)." if step.get("repeats") else "."),
        "",
        *(
            [
                "The tiny CLIP is a stand-in for a CPU: at its width the label-query "
                "cross-attention and the extra heads are a large share of the step. The ratio "
                "that matters is the one at ViT-B/16 size (`--model vit-b16`).",
                "",
            ]
            if step["model"] == "tiny CLIP"
            else []
        ),
    ]


def _render_loader(loader: dict[str, Any]) -> list[str]:
    return [
        f"Loader, one worker (one thread), {loader['images']} {loader['source']} images, "
        f"weak + strong views at {loader['size']} px:",
        "",
        *_table(
            ("path", "unlabeled images/s (wall)", "per CPU second"),
            (
                "decoded from the files",
                loader["uncached_images_per_s"],
                loader["uncached_images_per_cpu_s"],
            ),
            (
                "from the prepared cache",
                loader["cached_images_per_s"],
                loader["cached_images_per_cpu_s"],
            ),
        ),
        f"Cached / uncached (CPU time): {loader['speedup']}x (goal: >= 300 images/s per "
        f"worker from the cache). Preparing the cache took {loader['prepare_s']} s.",
        "",
    ]


def _render_map(metric: dict[str, Any]) -> list[str]:
    return [
        f"mAP of {metric['images']} x {metric['classes']} scores (update + compute):",
        "",
        *_table(
            ("implementation", "wall s", "CPU s"),
            ("`MultiLabelMetrics` (exact, this package)", metric["ours_s"], metric["ours_cpu_s"]),
            (
                "torchmetrics `MultilabelAveragePrecision`",
                metric["torchmetrics_s"],
                metric["torchmetrics_cpu_s"],
            ),
            (
                "scikit-learn `average_precision_score`",
                metric["sklearn_s"],
                metric["sklearn_cpu_s"],
            ),
        ),
        "Largest difference from scikit-learn's per-class AP: "
        f"{metric['max_ap_diff_vs_sklearn']:.1e}. Goal: < 0.5 s.",
        "",
    ]


def _table(header: Sequence[str], *rows: Sequence[Any]) -> list[str]:
    """A Markdown table (cells as ``str`` gives them), then a blank line."""
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows),
        "",
    ]


def _mfu(step: dict[str, Any]) -> str:
    return "n/a (no peak for this device)" if step.get("mfu") is None else f"{step['mfu']:.1%}"


def keep_soak_section(text: str, doc: Path) -> str:
    """``text`` plus the soak section ``benchmarks/soak.py`` wrote into ``doc``, if any."""
    begin, end = "<!-- soak:begin -->", "<!-- soak:end -->"
    old = doc.read_text() if doc.exists() else ""
    if begin not in old or end not in old:
        return text
    return text.rstrip() + "\n\n" + old[old.index(begin) : old.index(end) + len(end)] + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--model",
        choices=list(SIZES),
        default=None,
        help="the step's CLIP (default: tiny on cpu, vit-b16 on cuda); a non-default model's "
        "figures are kept as their own entry, e.g. cpu-vit-b16",
    )
    parser.add_argument("--labeled-batch", type=int, default=None)
    parser.add_argument("--unlabeled-batch", type=int, default=None)
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=["map", "loader", "step", "startup"],
        default=["map", "loader", "step", "startup"],
    )
    parser.add_argument("--loader-images", type=int, default=2000)
    parser.add_argument("--map-images", type=int, default=40504)
    parser.add_argument("--map-classes", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default by device)")
    parser.add_argument("--warmup-steps", type=int, default=None, help="untimed first steps")
    parser.add_argument(
        "--compile", action="store_true", help="time the step with model.compile_network"
    )
    parser.add_argument(
        "--step-repeats", type=int, default=3, help="fits per method, in alternating order"
    )
    parser.add_argument("--startup-repeats", type=int, default=3, help="0 skips the start-up")
    parser.add_argument("--note", default="", help="free text about the machine, kept in the doc")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--doc", type=Path, default=DOC)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is available")
    start = time.perf_counter()
    default_model = "vit-b16" if args.device == "cuda" else "tiny"
    model = args.model or default_model
    key = args.device if model == default_model else f"{args.device}-{model}"
    sizes = dict(SIZES[model])
    if args.labeled_batch:
        sizes["labeled_batch"] = args.labeled_batch
    if args.unlabeled_batch:
        sizes["unlabeled_batch"] = args.unlabeled_batch
    if args.steps:
        sizes["steps"] = args.steps
    if args.warmup_steps is not None:
        sizes["warmup_steps"] = args.warmup_steps
    device_name, peak = peak_flops(args.device)
    precision = "bf16-mixed" if args.device == "cuda" else "32-true"
    command = " ".join(["python", "benchmarks/speed.py", *(argv or sys.argv[1:])])
    entry: dict[str, Any] = {
        "command": command,
        "note": args.note,
        "complete": False,
        "total_s": 0.0,
        "machine": {
            "device": device_name,
            "peak_bf16_flops": peak,
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "map": None,
        "loader": None,
        "step": None,
        "startup": None,
    }

    def save() -> None:
        # After every part, so that an interrupted run keeps what it measured.
        entry["total_s"] = round(time.perf_counter() - start, 1)
        results = json.loads(args.output.read_text()) if args.output.is_file() else {}
        results[key] = entry
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=2) + "\n")
        args.doc.write_text(keep_soak_section(render(results), args.doc))

    if "map" in args.parts:
        print("map ...", flush=True)
        entry["map"] = bench_map(args.device, args.map_images, args.map_classes, args.repeats)
        save()
    if "loader" in args.parts:
        print("loader ...", flush=True)
        entry["loader"] = bench_loader(args.loader_images, 224, sizes["unlabeled_batch"])
        save()
    if "step" in args.parts:
        print("step ...", flush=True)
        step = bench_step(args.device, sizes, precision, args.compile, args.step_repeats)
        step["model"] = "ViT-B/16 CLIP (random weights)" if sizes["clip"] is None else "tiny CLIP"
        for name in ("cap", "cssa"):
            step[name]["mfu"] = (
                None if peak is None else step[name]["flops_per_step"] / step[name]["step_s"] / peak
            )
        entry["step"] = step
        save()
    if "startup" in args.parts and args.startup_repeats:
        print("startup ...", flush=True)
        entry["startup"] = bench_startup(args.startup_repeats)
    entry["complete"] = True
    save()
    print(json.dumps(entry, indent=2))
    return entry


if __name__ == "__main__":
    main()
