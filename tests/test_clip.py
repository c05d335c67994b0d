import pytest
import torch
import torch.nn.functional as F

from cssa_lightning.networks.clip import CLIPBackbone, zero_shot_scores

from .conftest import CLASS_NAMES


def test_tokenizer_known_ids(tiny_clip_dir):
    backbone = CLIPBackbone(str(tiny_clip_dir))
    tokenizer = backbone.tokenizer
    ids = tokenizer("a photo of the red.")["input_ids"]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens == [
        "<|startoftext|>",
        "a</w>",
        "photo</w>",
        "of</w>",
        "the</w>",
        "red</w>",
        ".</w>",
        "<|endoftext|>",
    ]
    assert ids[0] == 0 and ids[-1] == 1
    assert backbone.model.config.text_config.eos_token_id == 1
    # Every class name is one token.
    for name in CLASS_NAMES:
        assert len(tokenizer(name, add_special_tokens=False)["input_ids"]) == 1


def test_features_shapes_and_global_matches_clip(tiny_clip_dir):
    backbone = CLIPBackbone(str(tiny_clip_dir)).eval()
    images = torch.randn(3, 3, 32, 32)
    features = backbone.encode_image(images)
    assert features.patch_tokens.shape == (3, 16, 32)
    assert features.global_feature.shape == (3, 32)
    reference = backbone.model.get_image_features(pixel_values=images)
    reference = getattr(reference, "pooler_output", reference)  # transformers 5 returns outputs
    torch.testing.assert_close(features.global_feature, reference, rtol=1e-5, atol=1e-5)
    text = backbone.class_text_features(CLASS_NAMES)
    assert text.shape == (6, 32)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(6))
    scores = zero_shot_scores(backbone, images, text)
    torch.testing.assert_close(
        scores, F.normalize(reference, dim=-1) @ text.T, rtol=1e-5, atol=1e-5
    )


def test_freezing(tiny_clip_dir):
    backbone = CLIPBackbone(str(tiny_clip_dir), freeze_vision=True, freeze_text=True)
    assert not any(p.requires_grad for p in backbone.parameters())
    backbone = CLIPBackbone(str(tiny_clip_dir), freeze_vision=False, freeze_text=True)
    assert all(p.requires_grad for p in backbone.model.vision_model.parameters())
    assert not any(p.requires_grad for p in backbone.model.text_model.parameters())
    assert not backbone.model.logit_scale.requires_grad


def test_partial_vision_training(tiny_clip_dir):
    backbone = CLIPBackbone(str(tiny_clip_dir), trainable_vision_layers=0)
    vision = backbone.model.vision_model
    assert not any(p.requires_grad for p in vision.encoder.parameters())
    assert all(p.requires_grad for p in vision.post_layernorm.parameters())
    assert backbone.model.visual_projection.weight.requires_grad
    import pytest

    with pytest.raises(ValueError, match="trainable_vision_layers"):
        CLIPBackbone(str(tiny_clip_dir), trainable_vision_layers=5)


def test_prompt_names_defaults_overrides_and_typos():
    import pytest

    from cssa_lightning.networks.clip import prompt_names

    names = ["pottedplant", "tvmonitor", "dog", "hair drier"]
    assert prompt_names(names) == ["potted plant", "tv monitor", "dog", "hair dryer"]
    assert prompt_names(names, {"dog": "puppy", "tvmonitor": "television"}) == [
        "potted plant",
        "television",
        "puppy",
        "hair dryer",
    ]
    with pytest.raises(ValueError, match=r"class_prompts names classes that do not exist: \['cta'"):
        prompt_names(names, {"cta": "cat"})


def test_class_prompts_change_the_prompts_not_the_class_names(tiny_clip_dir):
    plain = CLIPBackbone(str(tiny_clip_dir)).eval()
    renamed = CLIPBackbone(str(tiny_clip_dir), class_prompts={"red": "green"}).eval()
    assert renamed.model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        expected = plain.class_text_features(["green", "blue"])
        got = renamed.class_text_features(["red", "blue"])
    torch.testing.assert_close(got, expected)


def test_task_option_reaches_the_prompts(tiny_clip_dir):
    from cssa_lightning.methods.multilabel import MultiLabelTask

    task = MultiLabelTask(
        ["red", "blue"], clip_checkpoint=str(tiny_clip_dir), class_prompts={"red": "green"}
    )
    expected = CLIPBackbone(str(tiny_clip_dir)).eval().class_text_features(["green", "blue"])
    torch.testing.assert_close(task.net.text_features, expected.detach())


def test_adamw_is_fused_only_when_every_parameter_is_on_a_gpu(tiny_clip_dir):
    from types import SimpleNamespace

    from cssa_lightning.methods.multilabel import MultiLabelTask

    task = MultiLabelTask(["red", "blue"], clip_checkpoint=str(tiny_clip_dir))
    task._trainer = SimpleNamespace(estimated_stepping_batches=10)
    optimizer = task.configure_optimizers()["optimizer"]
    assert not optimizer.defaults["fused"]  # CPU parameters: the default implementation
    if torch.cuda.is_available():
        task.cuda()
        assert task.configure_optimizers()["optimizer"].defaults["fused"]


@pytest.fixture(scope="module")
def three_block_clip_dir(tmp_path_factory):
    """The tiny CLIP of ``tiny_clip_dir`` with three vision blocks (one would not tell the
    blocks' rates apart)."""
    from .conftest import make_tiny_clip

    return make_tiny_clip(tmp_path_factory.mktemp("tiny-clip-3"), layers=3)


def _peak_lr_by_name(task) -> dict[str, float]:
    from types import SimpleNamespace

    task._trainer = SimpleNamespace(estimated_stepping_batches=10, max_epochs=2)
    optimizer = task.configure_optimizers()["optimizer"]
    task._trainer = None
    lr_of = {id(p): g["max_lr"] for g in optimizer.param_groups for p in g["params"]}
    return {n: lr_of[id(p)] for n, p in task.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("task_class", ["MultiLabelTask", "CSSATask"])
def test_layer_lr_decay_of_the_vision_tower(three_block_clip_dir, task_class):
    import cssa_lightning

    options = dict(clip_checkpoint=str(three_block_clip_dir), lr=1e-3, head_lr=5e-3)
    if task_class == "CSSATask":
        options.update(context={"num_contexts": 2}, attention_heads=4)
    build = getattr(cssa_lightning, task_class)
    lrs = _peak_lr_by_name(build(CLASS_NAMES[:3], layer_lr_decay=0.5, **options))
    seen = set()
    for name, lr in lrs.items():
        if not name.startswith("net.clip."):
            want, kind = 5e-3, "head"
        elif ".vision_model.encoder.layers." in name:
            block = int(name.split(".vision_model.encoder.layers.")[1].split(".")[0])
            want, kind = 1e-3 * 0.5 ** (2 - block), f"block{block}"
        elif ".vision_model.embeddings." in name or ".vision_model.pre_layrnorm." in name:
            want, kind = 1e-3 * 0.5**3, "stem"
        else:  # post-layernorm and projection
            want, kind = 1e-3, "top"
        assert lr == pytest.approx(want, rel=1e-12), name
        seen.add(kind)
    assert seen == {"head", "block0", "block1", "block2", "stem", "top"}
    assert lrs["net.clip.model.vision_model.encoder.layers.0.mlp.fc1.weight"] == 2.5e-4
    assert lrs["net.clip.model.vision_model.embeddings.patch_embedding.weight"] == 1.25e-4
    # Without it every CLIP parameter peaks at lr, as before.
    plain = _peak_lr_by_name(build(CLASS_NAMES[:3], **options))
    assert {lr for n, lr in plain.items() if n.startswith("net.clip.")} == {1e-3}
    assert {lr for n, lr in plain.items() if not n.startswith("net.clip.")} == {5e-3}


def test_layer_lr_decay_leaves_frozen_blocks_out(three_block_clip_dir):
    from cssa_lightning.methods.multilabel import MultiLabelTask

    task = MultiLabelTask(
        CLASS_NAMES[:3],
        clip_checkpoint=str(three_block_clip_dir),
        trainable_vision_layers=1,
        layer_lr_decay=0.5,
    )
    lrs = _peak_lr_by_name(task)
    vision = {n: lr for n, lr in lrs.items() if ".vision_model." in n}
    assert vision and all(".layers.2." in n or "post_layernorm" in n for n in vision)
    assert {lr for n, lr in vision.items() if ".layers.2." in n} == {task.hparams.lr}


@pytest.mark.parametrize("decay", [0.0, -0.5, 1.5])
def test_bad_layer_lr_decay(tiny_clip_dir, decay):
    from cssa_lightning.methods.multilabel import MultiLabelTask

    with pytest.raises(ValueError, match="layer_lr_decay"):
        MultiLabelTask(CLASS_NAMES[:3], clip_checkpoint=str(tiny_clip_dir), layer_lr_decay=decay)


def test_a_missing_clip_is_one_line_with_the_fix(monkeypatch):
    from cssa_lightning.networks.clip import CLIPBackbone

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match=r"did you mean the packaged 'tiny-clip'\?") as typo:
        CLIPBackbone("tiny-clipp")
    assert "\n" not in str(typo.value)
    with pytest.raises(OSError) as offline:
        CLIPBackbone("openai/clip-vit-base-patch99")
    message = str(offline.value)
    assert "\n" not in message and "HF_HUB_OFFLINE is set" in message
    assert message.startswith("cannot load CLIP checkpoint 'openai/clip-vit-base-patch99' (")
