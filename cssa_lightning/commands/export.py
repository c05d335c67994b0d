"""``cssa export``: a trained checkpoint as a self-contained directory, plus ONNX.

The directory holds everything inference needs and nothing of training::

    clip/                  the CLIP (model, tokenizer, image processor) written with
                           ``save_pretrained``: ``AutoProcessor.from_pretrained("clip")`` works
    heads.safetensors      the heads (cross-attention, alignment, context) and class texts
    config.json            class names, thresholds, network options, preprocessing
    model.onnx             images -> probabilities (unless --no_onnx)
    README.md              the model card: classes and thresholds, weights, training options,
                           preprocessing, intended use and limits

Every file is readable by all (mode 0644 less the umask's bits), like files other tools write.

Load it with one call, :func:`load_exported` (torch, transformers and this package's
network modules; no Lightning, no checkpoint), or run ``model.onnx`` with ``onnxruntime``
alone: its input ``pixel_values`` is a float ``(batch, 3, S, S)`` array of RGB images resized
to ``S = preprocessing.image_size`` (bicubic) and normalised as ``(x / 255 - mean) / std``;
its output ``probabilities`` is ``(batch, C)`` in the order of ``class_names``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
import torch
from torch import Tensor, nn

from cssa_lightning.commands.parsers import parse_options
from cssa_lightning.guards import first_line
from cssa_lightning.networks.clip import CLIPBackbone
from cssa_lightning.networks.network import MultiLabelCLIPNet

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

log = logging.getLogger(__name__)

# What load_exported(...).predict takes for one image.
ImageInput: TypeAlias = "str | Path | PILImage | np.ndarray"

FORMAT = "cssa-lightning-export"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
HEADS_FILE = "heads.safetensors"
ONNX_FILE = "model.onnx"
CARD_FILE = "README.md"
# The numpy + PIL preprocessing (cssa_lightning/commands/reference_preprocessing.py), copied.
PREPROCESS_FILE = "preprocess.py"
CLIP_DIR = "clip"


class ExportedClassifier(nn.Module):
    """A trained multi-label classifier loaded from an export directory.

    ``model(pixel_values)`` gives probabilities ``(B, C)``; :meth:`preprocess` turns RGB
    uint8 images ``(H, W, 3)`` into ``pixel_values``; :meth:`predict` does both and applies
    the exported thresholds.

    Attributes:
        net: The network (CLIP + heads).
        class_names: Ordered class names.
        thresholds: ``(C,)`` decision thresholds chosen at export.
        config: The export's ``config.json``.
    """

    def __init__(
        self, net: MultiLabelCLIPNet, config: dict[str, Any], directory: Path | None = None
    ):
        super().__init__()
        self.net = net
        self.config = config
        self.directory = directory  # the export directory it was loaded from
        self.class_names: list[str] = list(config["class_names"])
        self.register_buffer("thresholds", torch.tensor(config["thresholds"]))

    def forward(self, pixel_values: Tensor) -> Tensor:
        return torch.sigmoid(self.net(pixel_values).logits)

    @classmethod
    def from_pretrained(
        cls,
        name: str | Path,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        token: str | None = None,
    ) -> ExportedClassifier:
        """Load an export from a local directory, or from a Hugging Face Hub model repository
        (``owner/name``, downloaded once into the Hub cache; offline, a cached copy is used).

        Raises:
            FileNotFoundError: A local directory that does not exist, or a repository that
                cannot be reached and is not cached.
        """
        local = Path(name).expanduser()
        if local.is_dir() or str(name).startswith((".", "/", "~")):
            return load_exported(local)
        from huggingface_hub import snapshot_download

        try:
            folder = snapshot_download(
                str(name), revision=revision, cache_dir=cache_dir, token=token
            )
        except Exception as error:  # noqa: BLE001 - offline, missing repo, auth: one line
            raise FileNotFoundError(
                f"{name}: not a local export directory, and the Hub repository cannot be "
                f"downloaded ({first_line(error)})"
            ) from error
        return load_exported(folder)

    def push_to_hub(self, repo_id: str, **options: Any) -> str:
        """Upload the export directory this model was loaded from (:func:`push_to_hub`)."""
        if self.directory is None:
            raise ValueError("this model was not loaded from an export directory")
        return push_to_hub(self.directory, repo_id, **options)

    def preprocess(self, images: Sequence[ImageInput]) -> Tensor:
        """Images -> ``pixel_values`` ``(B, 3, S, S)``, as the model was trained to see them.

        Each image is a path (any format PIL reads), a PIL image (any mode: converted to RGB
        as training does) or an RGB uint8 ``(H, W, 3)`` array.

        Raises:
            ValueError: An image cannot be read, or an array is not RGB uint8 ``(H, W, 3)``.
        """
        from cssa_lightning.data.transforms import eval_transform

        p = self.config["preprocessing"]
        transform = eval_transform(p["image_size"], p["mean"], p["std"])
        return torch.stack(
            [transform(image=rgb_array(image, i))["image"] for i, image in enumerate(images)]
        )

    @torch.no_grad()
    def predict(self, images: Sequence[ImageInput]) -> tuple[Tensor, list[list[str]]]:
        """Probabilities ``(B, C)`` and the predicted label names of images given as paths,
        PIL images or RGB uint8 arrays (see :meth:`preprocess`), with the export's
        thresholds."""
        probs = self(self.preprocess(images).to(self.thresholds.device))
        labels = [
            [n for n, hit in zip(self.class_names, row, strict=True) if hit]
            for row in (probs >= self.thresholds).tolist()
        ]
        return probs, labels


def rgb_array(image: ImageInput, index: int = 0) -> np.ndarray:
    """An RGB uint8 ``(H, W, 3)`` array of a path, a PIL image or such an array (``index``
    names the image in errors)."""
    from PIL import Image

    from cssa_lightning.data.records import load_image, to_rgb8

    if isinstance(image, str | Path):
        return load_image({"path": str(Path(image).expanduser())})
    if isinstance(image, Image.Image):
        return to_rgb8(image)
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(
            f"image {index}: expected a path, a PIL image or an RGB uint8 (H, W, 3) array, "
            f"got an array of {array.dtype} {tuple(array.shape)}"
        )
    return array


def push_to_hub(
    directory: str | Path,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload a cssa-lightning export",
) -> str:
    """Upload an export directory to a Hugging Face Hub model repository (created if needed;
    the model card is its README) and return the commit's URL. ``from_pretrained(repo_id)``
    loads it back.

    Raises:
        FileNotFoundError: ``directory`` is not an export directory.
    """
    from huggingface_hub import HfApi

    directory = Path(directory).expanduser()
    if not (directory / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{directory}: not an export directory (no {CONFIG_FILE})")
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(directory),
        repo_type="model",
        commit_message=commit_message,
    )
    return str(getattr(commit, "commit_url", commit))


def load_exported(directory: str | Path) -> ExportedClassifier:
    """Load an export directory written by ``cssa export`` (CPU, eval mode).

    Raises:
        FileNotFoundError: The directory or one of its files is missing.
        ValueError: ``config.json`` is not an export config of a known version.
    """
    from safetensors.torch import load_file

    directory = Path(directory).expanduser()
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} does not exist: not an export directory")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("format") != FORMAT or config.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{config_path}: expected format {FORMAT!r} version {FORMAT_VERSION}, got "
            f"{config.get('format')!r} version {config.get('version')!r}"
        )
    network = config["network"]
    clip = CLIPBackbone(str(directory / CLIP_DIR), freeze_vision=True, freeze_text=True)
    net = MultiLabelCLIPNet(
        clip,
        config["class_names"],
        config["prompt_templates"],
        logit_scale=clip.logit_scale,
        learnable_prototypes=network["learnable_prototypes"],
        label_specific=network["label_specific"],
        attention_heads=network["attention_heads"],
        num_contexts=network["num_contexts"],
        context_hidden=network["context_hidden"],
        context_input=network["context_input"],
        local_branch=network.get("local_branch", False),  # exports before D2L have none
        label_query_block=network.get("label_query_block", "attention"),
        label_query_depth=network.get("label_query_depth", 1),
        context_queries=network.get("context_queries", False),
    )
    heads = load_file(str(directory / HEADS_FILE))
    missing, unexpected = net.load_state_dict(heads, strict=False)
    missing = [key for key in missing if not key.startswith("clip.")]
    if missing or unexpected:
        raise ValueError(
            f"{directory / HEADS_FILE}: does not match config.json "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    model = ExportedClassifier(net, config, directory)
    model.eval()
    return model


class _Probabilities(nn.Module):
    """The network as images -> probabilities, for ONNX."""

    def __init__(self, net: MultiLabelCLIPNet):
        super().__init__()
        self.net = net

    def forward(self, pixel_values: Tensor) -> Tensor:
        return torch.sigmoid(self.net(pixel_values).logits)


def export_onnx(net: MultiLabelCLIPNet, image_size: int, path: Path) -> None:
    """Write ``net`` as ONNX: ``pixel_values (batch, 3, S, S) -> probabilities (batch, C)``."""
    require_onnx()
    model = _Probabilities(net).eval()
    example = torch.zeros(2, 3, image_size, image_size)
    batch = torch.export.Dim("batch", min=1)
    # The exporter announces each of its stages, the vision ops it skips without torchvision
    # (this model uses none) and the constant folds it leaves out: not the user's to act on.
    noisy = [
        logging.getLogger(name)
        for name in (
            "torch.onnx._internal.exporter._registration",
            "onnxscript.optimizer._constant_folding",
        )
    ]
    levels = [logger.level for logger in noisy]
    for logger in noisy:
        logger.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
            program = torch.onnx.export(
                model,
                (example,),
                input_names=["pixel_values"],
                output_names=["probabilities"],
                dynamic_shapes=({0: batch},),
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    finally:
        for logger, level in zip(noisy, levels, strict=True):
            logger.setLevel(level)
    program.save(str(path))


def require_onnx() -> None:
    """Raise an install hint unless the ONNX exporter's packages are installed."""
    import importlib.util

    missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(
            f"ONNX export needs {' and '.join(missing)}: pip install 'cssa-lightning[onnx]' "
            "(or pass --no_onnx)"
        )


def export(
    ckpt_path: str,
    output: str,
    weights: str = "auto",
    thresholds: str = "auto",
    val_source: str | None = None,
    onnx: bool = True,
    overwrite: bool = False,
) -> Path:
    """Run ``cssa export``; returns the export directory."""
    from safetensors.torch import save_file

    from cssa_lightning.commands.predict import choose_thresholds, resolve_thresholds
    from cssa_lightning.commands.trained import load_trained

    out = Path(output).expanduser()
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{out} exists and is not empty: pass --overwrite or another --output"
        )
    if onnx:
        require_onnx()
    task, preprocessing = load_trained(ckpt_path)
    has_teacher = "_teacher" in task.evaluated_scores
    if weights == "teacher" and not has_teacher:
        raise ValueError(f"--weights teacher: {type(task).__name__} has no teacher")
    use_teacher = has_teacher and weights != "student"
    net: MultiLabelCLIPNet = task.teacher.module if use_teacher else task.net
    decide_by = "probs_teacher" if use_teacher else "probs"
    thresholds = resolve_thresholds(task, thresholds)
    chosen = choose_thresholds(task, thresholds, decide_by, val_source, preprocessing, 64)

    out.mkdir(parents=True, exist_ok=True)
    for name in (CONFIG_FILE, HEADS_FILE, ONNX_FILE, CARD_FILE):
        (out / name).unlink(missing_ok=True)
    net.clip.model.save_pretrained(out / CLIP_DIR)
    net.clip.tokenizer.save_pretrained(out / CLIP_DIR)
    image_processor(preprocessing).save_pretrained(out / CLIP_DIR)
    heads = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    heads = {k: v for k, v in heads.items() if not k.startswith("clip.")}
    # The class texts as the trained text tower gives them, so that inference never runs it.
    with torch.no_grad():
        heads["text_features"] = net.class_text_features().detach().cpu().contiguous()
    save_file(heads, str(out / HEADS_FILE))
    hp = task.hparams
    options = task.network_options()
    config = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "class_names": list(task.class_names),
        "thresholds": [float(t) for t in chosen],
        "threshold_source": thresholds,
        "weights": "teacher" if use_teacher else "student",
        "task_class": f"{type(task).__module__}.{type(task).__qualname__}",
        "source_checkpoint": str(Path(ckpt_path).expanduser().resolve()),
        "clip_checkpoint": hp.clip_checkpoint,
        "prompt_templates": list(net.prompt_templates),
        "network": {
            "learnable_prototypes": bool(hp.learnable_prototypes),
            "label_specific": bool(options.get("label_specific", False)),
            "attention_heads": int(options.get("attention_heads", 8)),
            "num_contexts": int(options.get("num_contexts", 0)),
            "context_hidden": int(options.get("context_hidden", 256)),
            "context_input": options.get("context_input", "global"),
            "local_branch": bool(options.get("local_branch", False)),
            "label_query_block": options.get("label_query_block", "attention"),
            "label_query_depth": int(options.get("label_query_depth", 1)),
            "context_queries": bool(options.get("context_queries", False)),
        },
        "preprocessing": {
            **preprocessing.to_dict(),
            "resize": "OpenCV INTER_CUBIC (cubic convolution, a = -0.75, no antialiasing) to "
            "image_size x image_size, rounded to uint8; preprocess.py reproduces it with numpy",
            "normalise": "(rgb / 255 - mean) / std, channels first",
        },
        "onnx": {"file": ONNX_FILE, "input": "pixel_values", "output": "probabilities"}
        if onnx
        else None,
    }
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (out / CARD_FILE).write_text(model_card(config, dict(hp)), encoding="utf-8")
    if onnx:
        # The ONNX graph is traced from the exported directory as it will be loaded.
        export_onnx(load_exported(out).net, preprocessing.image_size, out / ONNX_FILE)
    from cssa_lightning.commands import reference_preprocessing

    (out / PREPROCESS_FILE).write_text(
        Path(reference_preprocessing.__file__).read_text(encoding="utf-8"), encoding="utf-8"
    )
    readable_by_all(out)
    log.info("exported %s to %s", ckpt_path, out)
    print(
        f"exported {config['weights']} weights of {config['task_class'].rsplit('.', 1)[-1]} "
        f"({len(task.class_names)} classes) -> {out}" + (f" (+ {ONNX_FILE})" if onnx else "")
    )
    return out


def main(args: Sequence[str] | None = None) -> None:
    """``cssa export`` with command-line ``args``."""
    options = parse_options("export", args)
    from cssa_lightning.reporting.run_files import quiet_inference

    quiet_inference()  # no weight-loading bar of transformers
    export(
        options.ckpt_path,
        options.output,
        options.weights,
        options.thresholds,
        options.val_source,
        not options.no_onnx,
        options.overwrite,
    )
    if options.push_to_hub:
        url = push_to_hub(options.output, options.push_to_hub, private=options.private)
        print(f"pushed {options.output} -> {url}")


def image_processor(preprocessing: Any) -> Any:
    """A ``transformers.CLIPImageProcessor`` with the export's preprocessing (square bicubic
    resize, the model's mean and std), saved beside the CLIP so ``AutoProcessor`` loads it.
    The package resizes with OpenCV and this processor with PIL: probabilities agree to ~1e-2,
    not bit for bit (``load_exported(d).preprocess`` is the package's own)."""
    # The PIL backend itself: the default one needs torchvision (which this package does not
    # install) and falls back to PIL with a warning.
    from transformers import CLIPImageProcessorPil

    size = preprocessing.image_size
    return CLIPImageProcessorPil(
        do_resize=True,
        size={"height": size, "width": size},
        resample=3,  # PIL bicubic
        do_center_crop=False,
        do_normalize=True,
        image_mean=list(preprocessing.mean),
        image_std=list(preprocessing.std),
    )


def model_card(config: dict[str, Any], hparams: dict[str, Any]) -> str:
    """The export's ``README.md``: what the model is, its classes and thresholds, how it was
    trained and preprocesses images, and what it is not for."""
    task = config["task_class"].rsplit(".", 1)[-1]
    # Option groups (pseudo, alignment, context) as one row per field: pseudo.threshold, ...
    flat = {
        f"{k}.{field}" if isinstance(v, dict) else k: value
        for k, v in hparams.items()
        for field, value in (v.items() if isinstance(v, dict) else [(None, v)])
    }
    training = {
        k: v
        for k, v in sorted(flat.items())
        if k != "class_names" and isinstance(v, str | int | float | bool | type(None))
    }
    rows = "\n".join(
        f"| {name} | {threshold:.3f} |"
        for name, threshold in zip(config["class_names"], config["thresholds"], strict=True)
    )
    options = "\n".join(f"| `{k}` | `{v}` |" for k, v in training.items())
    p = config["preprocessing"]
    return f"""---
library_name: cssa-lightning
tags: [multi-label-classification, clip, semi-supervised]
---

# Multi-label classifier ({task}, {len(config["class_names"])} classes)

Exported by `cssa export` from `{config["source_checkpoint"]}` (the {config["weights"]} weights):
a CLIP image encoder (`clip/`, from `{config["clip_checkpoint"]}`) with label heads
(`heads.safetensors`). Load it with

```python
from cssa_lightning import ExportedClassifier
model = ExportedClassifier.from_pretrained("this-directory")  # or a Hub repository id
probs, labels = model.predict(images)  # paths, PIL images or RGB uint8 arrays
```

or run `model.onnx` with onnxruntime, numpy and PIL alone:

```python
import onnxruntime
from preprocess import pixel_values  # preprocess.py in this directory

session = onnxruntime.InferenceSession("model.onnx")
(probs,) = session.run(None, {{"pixel_values": pixel_values(["a.jpg"], ".")}})
```

## Classes and decision thresholds

Thresholds: `{config["threshold_source"]}` (see `cssa predict --help`).

| class | threshold |
|---|---|
{rows}

## Preprocessing

RGB, resized to {p["image_size"]}x{p["image_size"]} (bicubic), normalised as `(x / 255 - mean) /
std` with mean {p["mean"]} and std {p["std"]}. `AutoProcessor.from_pretrained("clip")` gives
the same steps with PIL's resize (probabilities within about 1e-2 of the package's OpenCV one);
`preprocess.py` gives exactly the package's pixels with numpy and PIL alone.

## Training options

| option | value |
|---|---|
{options}

## Intended use and limits

Tagging images with the classes above, in images like those it was trained on. Its
probabilities are calibrated only as well as its training data allowed; thresholds chosen on
other data change precision and recall. It inherits the biases and blind spots of its CLIP and
of its labeled and unlabeled training images, and it knows no class outside the list. Not for
decisions about people.
"""


def readable_by_all(folder: Path) -> None:
    """Give every file under ``folder`` mode 0644 less the umask's bits (some writers, e.g.
    safetensors through a temporary file, leave 0600)."""
    import os

    umask = os.umask(0)
    os.umask(umask)
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(0o644 & ~umask)
