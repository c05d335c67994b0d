"""``cssa export``: the directory and the ONNX give the Lightning model's probabilities."""

from __future__ import annotations

import json
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cssa_lightning.commands.entry import main
from cssa_lightning.commands.export import load_exported
from cssa_lightning.commands.predict import ImageFiles
from cssa_lightning.commands.trained import load_trained
from cssa_lightning.data.records import load_image


@pytest.fixture(scope="module")
def exported(tmp_path_factory, trained_cssa):
    out = tmp_path_factory.mktemp("export") / "model"
    main(
        [
            "export",
            "--ckpt_path",
            str(trained_cssa),
            "--output",
            str(out),
            "--thresholds",
            "trained",
        ]
    )
    return out


def images_and_reference(trained_cssa, image_folders, count=5):
    paths = sorted((image_folders["test"] / "images").glob("*.png"))[:count]
    task, preprocessing = load_trained(trained_cssa)
    dataset = ImageFiles(paths, preprocessing.transform(), preprocessing.image_size)
    pixels = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    with torch.no_grad():
        scores = task.evaluation_scores(pixels)
    return task, paths, pixels, scores


def test_directory_loads_in_one_call_and_matches(exported, trained_cssa, image_folders, tmp_path):
    task, paths, pixels, scores = images_and_reference(trained_cssa, image_folders)
    # Moved elsewhere, the directory still loads: it is self-contained.
    moved = tmp_path / "moved"
    shutil.copytree(exported, moved)
    model = load_exported(moved)
    config = json.loads((moved / "config.json").read_text())
    assert model.class_names == task.class_names and config["weights"] == "teacher"
    finite = torch.isfinite(task.thresholds)
    torch.testing.assert_close(model.thresholds[finite], task.thresholds[finite].float())
    with torch.no_grad():
        probs = model(pixels)
    torch.testing.assert_close(probs, scores["_teacher"], atol=1e-5, rtol=0)
    # From raw RGB images, with the exported preprocessing.
    raw = [load_image({"path": str(p)}) for p in paths]
    probs_raw, labels = model.predict(raw)
    torch.testing.assert_close(probs_raw, scores["_teacher"], atol=1e-5, rtol=0)
    assert labels[0] == [
        c
        for c, p, t in zip(task.class_names, probs_raw[0], model.thresholds, strict=True)
        if p >= t
    ]


def test_predict_takes_paths_pil_images_and_arrays_alike(exported, trained_cssa, image_folders):
    from PIL import Image

    _, paths, _, scores = images_and_reference(trained_cssa, image_folders)
    model = load_exported(exported)
    arrays = [load_image({"path": str(p)}) for p in paths]
    from_arrays, labels = model.predict(arrays)
    from_paths, labels_of_paths = model.predict([str(p) for p in paths])
    pil = [Image.open(p) for p in paths]
    # A grey-scale PIL image is read as training reads it (converted to RGB).
    pil[0] = pil[0].convert("L")
    from_pil, _ = model.predict(pil)
    torch.testing.assert_close(from_paths, from_arrays, atol=0, rtol=0)
    assert labels_of_paths == labels
    torch.testing.assert_close(from_pil[1:], from_arrays[1:], atol=0, rtol=0)
    grey = np.repeat(np.asarray(pil[0])[..., None], 3, axis=-1)
    torch.testing.assert_close(from_pil[:1], model.predict([grey])[0], atol=0, rtol=0)
    torch.testing.assert_close(from_arrays, scores["_teacher"], atol=1e-5, rtol=0)
    with pytest.raises(
        ValueError, match=r"image 1: expected .* got an array of float32 \(8, 8, 3\)"
    ):
        model.predict([arrays[0], np.zeros((8, 8, 3), np.float32)])
    with pytest.raises(ValueError, match="cannot read image"):
        model.predict([paths[0].parent / "missing.png"])


def test_export_has_a_model_card_a_processor_and_readable_files(
    exported, trained_cssa, image_folders
):
    from transformers import AutoProcessor

    card = (exported / "README.md").read_text()
    config = json.loads((exported / "config.json").read_text())
    assert card.startswith("---\nlibrary_name: cssa-lightning")
    for name, threshold in zip(config["class_names"], config["thresholds"], strict=True):
        assert f"| {name} | {threshold:.3f} |" in card
    assert "## Intended use and limits" in card and "`ema_decay`" in card
    assert "| `pseudo.threshold` | `cat` |" in card and "| `context.num_contexts` | `2` |" in card
    assert '{"pixel_values": pixel_values(["a.jpg"], ".")}' in card  # ONNX without the package
    # AutoProcessor loads the exported CLIP folder (tokenizer + image processor) and prepares
    # images as the export does, up to PIL's and OpenCV's bicubic differences.
    processor = AutoProcessor.from_pretrained(exported / "clip")
    _, paths, pixels, _ = images_and_reference(trained_cssa, image_folders, count=2)
    raw = [load_image({"path": str(p)}) for p in paths]
    theirs = processor(images=raw, return_tensors="pt")["pixel_values"]
    assert theirs.shape == pixels.shape
    assert (theirs - pixels).abs().mean() < 0.1
    text = processor(text=["a photo of a red."], return_tensors="pt")
    assert text["input_ids"].shape[0] == 1
    # Every file 0644 less the umask (safetensors' temporary files used to leave 0600).
    umask = os.umask(0)
    os.umask(umask)
    modes = {f.name: f.stat().st_mode & 0o777 for f in exported.rglob("*") if f.is_file()}
    assert set(modes.values()) == {0o644 & ~umask}, modes


def test_onnx_matches_the_lightning_model(exported, trained_cssa, image_folders):
    onnxruntime = pytest.importorskip("onnxruntime")
    _, _, pixels, scores = images_and_reference(trained_cssa, image_folders, count=3)
    session = onnxruntime.InferenceSession(
        str(exported / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    (probs,) = session.run(["probabilities"], {"pixel_values": pixels.numpy()})
    np.testing.assert_allclose(probs, scores["_teacher"].numpy(), atol=1e-5, rtol=0)


def test_student_export_without_onnx(tmp_path, trained_cssa, image_folders):
    out = tmp_path / "student"
    main(
        [
            "export",
            "--ckpt_path",
            str(trained_cssa),
            "--output",
            str(out),
            "--weights",
            "student",
            "--no_onnx",
        ]
    )
    assert not (out / "model.onnx").exists()
    _, _, pixels, scores = images_and_reference(trained_cssa, image_folders, count=3)
    with torch.no_grad():
        probs = load_exported(out)(pixels)
    torch.testing.assert_close(probs, scores[""], atol=1e-5, rtol=0)
    # Default thresholds: the checkpoint's trained ones (0.5 where a class has none).
    task, _ = load_trained(trained_cssa)
    trained = torch.where(torch.isfinite(task.thresholds), task.thresholds.float(), 0.5)
    torch.testing.assert_close(load_exported(out).thresholds, trained)
    config = json.loads((out / "config.json").read_text())
    assert config["threshold_source"] == "trained"


def test_export_refuses_a_non_empty_folder(tmp_path, trained_cssa, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--ckpt_path", str(trained_cssa), "--output", str(tmp_path)])
    assert exit_info.value.code == 1
    assert "is not empty" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").read_text() == "mine"


class LocalHub:
    """A stand-in for the Hugging Face Hub over a local folder: ``HfApi`` (create_repo,
    upload_folder) and ``snapshot_download`` as ``huggingface_hub`` names them, recording the
    calls, so that the package's own Hub code runs offline."""

    def __init__(self, root):
        self.root, self.calls = root, []
        hub = self

        class Api:
            def __init__(self, token=None):
                hub.calls.append(("token", token))

            def create_repo(self, repo_id, repo_type, private, exist_ok):
                hub.calls.append(("create_repo", repo_id, repo_type, private))
                (hub.root / repo_id).mkdir(parents=True, exist_ok=exist_ok)

            def upload_folder(self, repo_id, folder_path, repo_type, commit_message):
                hub.calls.append(("upload_folder", repo_id, repo_type))
                shutil.copytree(folder_path, hub.root / repo_id, dirs_exist_ok=True)
                return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/1")

        self.HfApi = Api

    def snapshot_download(self, repo_id, revision=None, cache_dir=None, token=None):
        if not (self.root / repo_id).is_dir():
            raise OSError(f"Repository Not Found for url: https://huggingface.co/{repo_id}")
        return str(self.root / repo_id)


def test_an_export_goes_to_the_hub_and_comes_back_with_from_pretrained(
    exported, trained_cssa, image_folders, tmp_path, monkeypatch, capsys
):
    import huggingface_hub

    from cssa_lightning import ExportedClassifier

    hub = LocalHub(tmp_path / "hub")
    monkeypatch.setattr(huggingface_hub, "HfApi", hub.HfApi)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub.snapshot_download)
    out = tmp_path / "export"
    args = ["export", "--ckpt_path", str(trained_cssa), "--output", str(out), "--no_onnx"]
    main([*args, "--thresholds", "trained", "--push_to_hub", "me/cssa-demo", "--private"])
    assert "pushed" in capsys.readouterr().out
    assert ("create_repo", "me/cssa-demo", "model", True) in hub.calls
    assert (hub.root / "me/cssa-demo/README.md").is_file()  # the model card is the repo's card
    # Loaded back by repository id, it predicts exactly as the local directory does.
    paths = sorted((image_folders["test"] / "images").glob("*.png"))[:3]
    remote = ExportedClassifier.from_pretrained("me/cssa-demo")
    local = ExportedClassifier.from_pretrained(out)
    torch.testing.assert_close(remote.predict(paths)[0], local.predict(paths)[0])
    # A loaded model pushes its own directory.
    assert remote.push_to_hub("me/copy") == "https://huggingface.co/me/copy/commit/1"
    assert (hub.root / "me/copy/heads.safetensors").is_file()
    with pytest.raises(FileNotFoundError, match="me/missing: not a local export directory"):
        ExportedClassifier.from_pretrained("me/missing")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ExportedClassifier.from_pretrained(tmp_path / "nowhere")


def test_the_exported_preprocess_py_needs_only_numpy_and_pil(exported, tmp_path):
    import subprocess
    import sys

    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate([(50, 70), (23, 31), (96, 40)]):  # down- and up-sizing
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    # In a fresh interpreter where torch and OpenCV cannot be imported.
    script = (
        "import sys; sys.modules['torch'] = sys.modules['cv2'] = None\n"
        f"sys.path.insert(0, {str(exported)!r})\n"
        "import numpy as np; from preprocess import pixel_values\n"
        f"np.save({str(tmp_path / 'pixels.npy')!r}, pixel_values({[str(p) for p in paths]!r}, "
        f"{str(exported)!r}))\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)
    reference = torch.from_numpy(np.load(tmp_path / "pixels.npy"))
    model = load_exported(exported)
    ours = model.preprocess(paths)
    torch.testing.assert_close(reference, ours, atol=1e-6, rtol=0)  # the same pixels
    with torch.no_grad():
        assert (model(reference) - model(ours)).abs().max() < 1e-3


def test_export_prints_its_own_line_only(tmp_path, trained_cssa, capfd):
    pytest.importorskip("onnxruntime")
    main(["export", "--ckpt_path", str(trained_cssa), "--output", str(tmp_path / "e")])
    out, err = capfd.readouterr()
    # Not the ONNX exporter's stages, its skipped torchvision ops or constant folds, nor
    # transformers' torchvision fallback or weight-loading bar.
    assert out.strip().splitlines() == [
        f"exported teacher weights of CSSATask (6 classes) -> {tmp_path / 'e'} (+ model.onnx)"
    ]
    for noise in ("torch.onnx", "torchvision", "constant folding", "Loading weights"):
        assert noise not in out + err, noise
