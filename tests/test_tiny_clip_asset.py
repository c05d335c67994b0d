"""The shipped tiny CLIPs ("tiny-clip" on world v2, "tiny-clip-v3"/"-v4" on worlds v3/v4;
cssa_lightning/synthetic/assets) load, are small and know their world."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cssa_lightning.data.transforms import CLIP_MEAN, CLIP_STD, eval_transform
from cssa_lightning.methods.metrics import average_precision
from cssa_lightning.networks.clip import (
    DEFAULT_TEMPLATES,
    CLIPBackbone,
    resolve_checkpoint,
    zero_shot_scores,
)
from cssa_lightning.synthetic import TINY_CLIP, TINY_CLIP_V3, TINY_CLIP_V4, world
from cssa_lightning.synthetic.captions import split_words, vocabulary
from cssa_lightning.synthetic.render import render_image
from cssa_lightning.synthetic.shapes import CLASS_NAMES
from cssa_lightning.synthetic.world import image_rng, sample_image_spec

MAX_MB = 15
# tiny-clip-v3's zero-shot AP of its rare classes is far below the others' (README: 40.2 vs 63.7
# on the test split); the test asks for a clear gap on 300 val images.
RARE_GAP = 10.0
# short name -> (directory, the world version it was pre-trained on)
ASSETS = {
    "tiny-clip": (TINY_CLIP, world.V2),
    "tiny-clip-v3": (TINY_CLIP_V3, world.V3),
    "tiny-clip-v4": (TINY_CLIP_V4, world.V4),
}


@pytest.fixture(scope="module", params=sorted(ASSETS))
def asset(request) -> tuple[str, CLIPBackbone, world.WorldVersion]:
    name = request.param
    directory, version = ASSETS[name]
    if not (Path(directory) / "config.json").is_file():
        pytest.fail(f"shipped checkpoint missing at {directory}; run scripts/pretrain_tiny_clip.py")
    return name, CLIPBackbone(name).eval(), version


@pytest.fixture(scope="module")
def backbone(asset) -> CLIPBackbone:
    return asset[1]


@pytest.mark.parametrize("name", sorted(ASSETS))
def test_short_name_resolves_to_the_packaged_directory(name):
    assert Path(resolve_checkpoint(name)) == Path(ASSETS[name][0])


@pytest.mark.parametrize("name", sorted(ASSETS))
def test_checkpoint_is_small_and_documented(name):
    directory = Path(ASSETS[name][0])
    files = [f for f in directory.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) <= MAX_MB * 1e6
    names = {f.name for f in files}
    assert {"config.json", "model.safetensors", "README.md"} <= names
    assert "zero-shot" in (directory / "README.md").read_text().lower()


def test_loads_with_expected_shape(backbone):
    assert backbone.image_size == 64
    vision = backbone.model.config.vision_config
    assert vision.patch_size == 8 and vision.hidden_size <= 128 and vision.num_hidden_layers <= 4
    assert 64 <= backbone.embed_dim <= 128


def test_every_class_name_and_prompt_word_is_one_token(backbone):
    tokenizer = backbone.tokenizer
    words = {*vocabulary(), *CLASS_NAMES}
    for template in DEFAULT_TEMPLATES:
        words |= set(split_words(template.format("")))
    unknown = [
        word
        for word in sorted(words)
        if len(tokenizer(word, add_special_tokens=False)["input_ids"]) != 1
    ]
    assert not unknown, f"words that are not one token: {unknown}"


@torch.no_grad()
def test_zero_shot_ranks_a_true_label_above_the_median(asset):
    _, backbone, version = asset
    rng = np.random.default_rng(1234)
    transform = eval_transform(backbone.image_size, CLIP_MEAN, CLIP_STD)
    specs = [sample_image_spec(rng, version) for _ in range(24)]
    pixels = torch.stack([transform(image=np.asarray(render_image(s, 64)))["image"] for s in specs])
    text = backbone.class_text_features(CLASS_NAMES, DEFAULT_TEMPLATES)
    scores = zero_shot_scores(backbone, pixels, text)
    assert scores.shape == (24, len(CLASS_NAMES))
    hits = 0
    for spec, row in zip(specs, scores, strict=True):
        median = row.median()
        best_true = max(row[CLASS_NAMES.index(n)] for n in spec.labels)
        hits += int(best_true > median)
    assert hits >= 18, f"a true label beat the median class in only {hits}/24 images"


@pytest.mark.parametrize("name", ["tiny-clip-v3", "tiny-clip-v4"])
@torch.no_grad()
def test_rare_classes_are_known_less_than_the_others(name):
    # Worlds v3 and v4's captions (almost) never name their rare classes: zero-shot must rank
    # them worse than the classes the text prior knows (labels have something to teach).
    _, version = ASSETS[name]
    backbone = CLIPBackbone(name).eval()
    transform = eval_transform(backbone.image_size, CLIP_MEAN, CLIP_STD)
    specs = [sample_image_spec(image_rng(7, "val", i), version) for i in range(300)]
    pixels = torch.stack([transform(image=np.asarray(render_image(s, 64)))["image"] for s in specs])
    scores = zero_shot_scores(
        backbone, pixels, backbone.class_text_features(CLASS_NAMES, DEFAULT_TEMPLATES)
    )
    targets = torch.tensor([[n in s.labels for n in CLASS_NAMES] for s in specs]).float()
    ap = 100 * average_precision(scores, targets)
    rare = torch.tensor([version.captions.is_rare(n) for n in CLASS_NAMES])
    assert ap[rare].nanmean() < ap[~rare].nanmean() - RARE_GAP


@torch.no_grad()
def test_class_texts_are_mostly_separable(backbone):
    # Measured for the shipped assets (their READMEs): v2 mean 0.61, 11 of 1128 pairs above 0.9.
    text = backbone.class_text_features(CLASS_NAMES, DEFAULT_TEMPLATES)
    n = len(CLASS_NAMES)
    pairs = (text @ text.T)[torch.triu(torch.ones(n, n, dtype=torch.bool), 1)]
    assert pairs.mean() < 0.7
    assert (pairs > 0.9).float().mean() < 0.02


def test_building_a_tokenizer_gives_the_same_ids_in_every_process():
    # The BPE trainer breaks ties in hash order, which differs between processes; the ids must
    # not (they decide which embedding row each word gets, so fixtures and the pre-training
    # script would not be reproducible).
    import subprocess
    import sys

    code = (
        "from cssa_lightning.synthetic.tiny_clip import build_clip_tokenizer\n"
        "t = build_clip_tokenizer(['red', 'green', 'hair', 'drier', 'a', 'photo', 'of'])\n"
        "print(sorted(t.get_vocab().items()), t('a photo of green')['input_ids'])\n"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
        for _ in range(3)
    }
    assert len(outputs) == 1


def test_pretraining_prompts_name_rare_classes_as_rarely_as_captions():
    # scripts/pretrain_tiny_clip.py replaces a caption by "a photo of a {label}." for 20 % of
    # images; for world v3's rare classes that prompt must be as rare as in captions, or the
    # text prior would learn them through the prompts.
    import importlib.util

    script = Path(__file__).parent.parent / "scripts" / "pretrain_tiny_clip.py"
    spec = importlib.util.spec_from_file_location("pretrain_tiny_clip", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    style = world.V3.captions
    rare, common = style.rare_classes[0], "cup"
    records = [
        {"labels": [rare], "captions": ["a photo on the beach"]},
        {"labels": [common], "captions": ["a cup"]},
    ]
    rng = np.random.default_rng(0)
    index = torch.tensor([0, 1] * 2000)
    texts = module.pick_texts(records, index, rng, p=1.0, style=style)
    rare_prompts = sum(rare in split_words(t) for t in texts[0::2])
    common_prompts = sum(t != "a cup" for t in texts[1::2])
    assert common_prompts == 2000  # p=1: every common image gets its prompt
    assert 0 < rare_prompts < 0.06 * 2000  # about rare_mention_prob (3 %)
    v2 = module.pick_texts(records, index, np.random.default_rng(0), p=1.0)
    assert sum(rare in split_words(t) for t in v2[0::2]) == 2000  # v2 knows no rare class
    never = module.pick_texts(records, index, np.random.default_rng(0), 1.0, world.V4.captions)
    assert not any(rare in split_words(t) for t in never[0::2])  # v4 never names them
