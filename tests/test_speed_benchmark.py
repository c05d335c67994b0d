"""``benchmarks/speed.py`` on tiny sizes: every part runs and the report is written."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest


def _load():
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "speed.py"
    spec = importlib.util.spec_from_file_location("benchmark_speed", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


speed = _load()

TINY = dict(
    image_size=32,
    clip=dict(image_size=32, patch_size=8, width=32, layers=1, heads=2, embed_dim=32),
    labeled_batch=2,
    unlabeled_batch=4,
    steps=3,  # OneCycleLR needs a few steps per phase
    warmup_steps=1,
    classes=10,  # at least the configs' 8 contexts
)


def test_step_benchmark_times_both_methods_and_counts_flops():
    step = speed.bench_step("cpu", TINY, "32-true", repeats=2)  # CAP, CSSA, CSSA, CAP
    assert step["repeats"] == 2
    for name in ("cap", "cssa"):
        assert step[name]["step_s"] > 0 and step[name]["flops_per_step"] > 0
    # CSSA adds label-query cross-attention and heads to CAP's step: more FLOPs.
    assert step["cssa"]["flops_per_step"] > step["cap"]["flops_per_step"]
    assert step["flops_cssa_over_cap"] > 1
    assert step["cssa_over_cap"] == pytest.approx(
        step["cssa"]["step_s"] / step["cap"]["step_s"], rel=1e-2
    )


def test_map_and_loader_parts_and_the_report(tmp_path):
    metric = speed.bench_map("cpu", 400, 6, repeats=1)
    assert metric["max_ap_diff_vs_sklearn"] < 1e-9
    loader = speed.bench_loader(6, 64, 3)
    assert loader["cached_images_per_s"] > 0 and loader["uncached_images_per_s"] > 0
    step = {
        "model": "tiny CLIP",
        "labeled_batch": 2,
        "unlabeled_batch": 4,
        "cssa_over_cap": 1.1,
        **{
            name: {"step_s": 0.5, "step_cpu_s": 0.8, "images_per_s": 12.0, "mfu": None}
            | {"tflops_per_s": 0.004, "flops_per_step": 2e9}
            for name in ("cap", "cssa")
        },
    }
    entry = {
        "command": "python benchmarks/speed.py",
        "note": "a note",
        "total_s": 12.0,
        "machine": {"device": "some CPU", "cpus": 2, "torch": "2.x"},
        "step": step,
        "map": metric,
        "loader": loader,
        "startup": {"cssa_help_s": 3.0, "cssa_help_cpu_s": 2.5},
    }
    text = speed.render({"cpu": entry})
    assert "CSSA / CAP step time: **1.1x**" in text
    assert "Not measured yet: run `python benchmarks/speed.py --device cuda`" in text
    assert "some CPU, 2 CPUs, torch 2.x; a note." in text
    assert "`cssa --help` start-up: 3.0 s (2.5 s of CPU)." in text
    partial = speed.render({"cpu": {**entry, "step": None, "complete": False}})
    assert "Training step: not measured in this run." in partial
    assert "interrupted, parts missing" in partial and "mAP of 400 x 6" in partial


def test_parts_and_a_non_default_model_get_their_own_entry(tmp_path):
    output, doc = tmp_path / "speed.json", tmp_path / "speed.md"
    common = ["--map-images", "300", "--repeats", "1", "--output", str(output), "--doc", str(doc)]
    speed.main(["--parts", "map", *common])
    entry = speed.main(["--parts", "map", "--model", "vit-b16", *common])
    assert entry["complete"] and entry["step"] is None and entry["map"]["images"] == 300
    results = json.loads(output.read_text())
    assert set(results) == {"cpu", "cpu-vit-b16"}  # the first run's entry is kept
    text = doc.read_text()
    assert text.index("## CPU\n") < text.index("## CPU-VIT-B16") < text.index("## CUDA")
