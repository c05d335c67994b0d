"""Every shipped config parses against the current code (typos and stale options fail here),
alone or combined as documented, and no config repeats an option at its default value."""

import importlib
import inspect
from pathlib import Path

import pytest
import yaml

from cssa_lightning.commands.cli import build_cli
from cssa_lightning.commands.packaged import packaged_configs

CONFIG_DIR = Path(__file__).parent.parent / "configs"
# The documented combinations: (subcommand, configs, model class).
COMBINATIONS = [
    ("fit", ["demo"], "cssa_lightning.CSSATask"),
    ("fit", ["ssmll", "coco"], "cssa_lightning.CSSATask"),
    ("fit", ["ssmll", "voc2012"], "cssa_lightning.CSSATask"),
    ("fit", ["ssmll", "coco", "cap"], "cssa_lightning.MeanTeacherTask"),
    ("fit", ["ssmll", "coco", "supervised_ema"], "cssa_lightning.MeanTeacherTask"),
    ("fit", ["ssmll", "voc2012", "d2l"], "cssa_lightning.D2LTask"),
    ("fit", ["ssmll", "coco", "cap", "prior_known_classes"], "cssa_lightning.MeanTeacherTask"),
    ("fit", ["ssmll", "voc2012", "d2l", "prior_known_classes"], "cssa_lightning.D2LTask"),
    ("test", ["ssmll", "coco", "zeroshot"], "cssa_lightning.MultiLabelTask"),
]


@pytest.mark.parametrize(
    ("subcommand", "names", "model"), COMBINATIONS, ids=["+".join(c[1]) for c in COMBINATIONS]
)
def test_config_combination_parses(subcommand, names, model, capsys):
    args = [subcommand]
    for name in names:
        args += ["--config", name]
    with pytest.raises(SystemExit) as exit_info:
        build_cli([*args, "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] == model
    options = printed["model"]["init_args"]
    if "cap" in names or "supervised_ema" in names:
        # CAP and supervised+EMA are the mean-teacher task: none of CSSA's parts (coco's
        # context options are dropped with them).
        assert not {"label_specific", "alignment", "context"} & set(options)
    if "d2l" in names:
        assert not {"label_specific", "alignment", "context"} & set(options)
        assert options["teacher_restart"] and options["schedule_restart"]
    if "supervised_ema" in names:
        assert options["use_consistency"] is False
        assert printed["data"]["init_args"]["load_unlabeled"] is False
    if "prior_known_classes" in names:
        # The overlay sets its fields of the pseudo group and keeps the others (D2L's F-beta).
        pseudo = options["pseudo"]
        assert (pseudo["prior_weight"], pseudo["prior_weighting"]) == (1.0, "labeled_ap")
        assert pseudo["min_prior_skill"] == 0.15
        assert pseudo["threshold"] == ("fbeta" if "d2l" in names else "cat")
        assert printed["data"]["init_args"]["strong_border"] == "reflect"
    if "coco" in names:
        assert printed["data"]["init_args"]["val_fraction"] == 0.05
        if subcommand == "fit" and model == "cssa_lightning.CSSATask":
            assert options["context"]["num_contexts"] == 8


def test_every_config_is_used_in_a_combination():
    assert {name for _, names, _ in COMBINATIONS for name in names} == set(packaged_configs())


def _defaults(class_path: str) -> dict:
    """Signature defaults of a class, following ``**kwargs`` up its bases."""
    module, _, name = class_path.rpartition(".")
    defaults = {}
    for cls in reversed(getattr(importlib.import_module(module), name).__mro__):
        if "__init__" in vars(cls):
            for parameter in inspect.signature(cls.__init__).parameters.values():
                if parameter.default is not inspect.Parameter.empty:
                    defaults[parameter.name] = parameter.default
    return defaults


def _repeated_defaults(section: dict, class_path: str, where: str) -> list[str]:
    defaults = _defaults(class_path)
    found = []
    for key, value in (section or {}).items():
        if key in defaults and defaults[key] == value and type(defaults[key]) is type(value):
            found.append(f"{where}.{key}={value!r}")
    return found


@pytest.mark.parametrize("name", sorted(packaged_configs()))
def test_no_option_repeats_its_default(name):
    config = yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())
    found = []
    trainer = dict(config.get("trainer") or {})
    for callback in trainer.pop("callbacks", None) or []:
        found += _repeated_defaults(callback.get("init_args"), callback["class_path"], "callback")
    logger = trainer.pop("logger", None)
    if isinstance(logger, dict) and "class_path" in logger:
        found += _repeated_defaults(logger.get("init_args"), logger["class_path"], "logger")
    found += _repeated_defaults(trainer, "lightning.pytorch.Trainer", "trainer")
    for part in ("model", "data"):
        section = config.get(part) or {}
        class_path = section.get("class_path") or (
            "cssa_lightning.CSSATask" if part == "model" else "cssa_lightning.MultiLabelDataModule"
        )
        found += _repeated_defaults(section.get("init_args"), class_path, part)
    assert not found, f"{name}.yaml repeats defaults: {found}"
