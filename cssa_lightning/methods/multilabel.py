"""``MultiLabelTask``: the supervised baseline (labeled stream only), evaluation and prediction.

``MeanTeacherTask`` (:mod:`cssa_lightning.methods.mean_teacher`; ``CSSATask`` stands on it) subclasses
it; the pieces a notebook may want to change are small public methods (``encode``,
``supervised_loss``, ``evaluation_scores``).
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule
from torch import Tensor, nn

from cssa_lightning.data.resume import GlobalRandomState
from cssa_lightning.guards import NonFiniteGuard, RunGuard
from cssa_lightning.methods.losses import asymmetric_loss, binary_cross_entropy
from cssa_lightning.methods.metrics import MultiLabelMetrics
from cssa_lightning.networks.clip import DEFAULT_TEMPLATES, CLIPBackbone, portable_checkpoint
from cssa_lightning.networks.network import Encoded, MultiLabelCLIPNet
from cssa_lightning.progress import track

log = logging.getLogger(__name__)

# Parameter names of the CLIP vision tower (Hugging Face's ``CLIPVisionTransformer``).
_VISION_BLOCK = re.compile(r"vision_model\.encoder\.layers\.(\d+)\.")
_VISION_STEM = ("vision_model.embeddings.", "vision_model.pre_layrnorm.")


def one_cycle_phases(total_steps: int, pct_start: float) -> tuple[int, float]:
    """``OneCycleLR``'s ``(total_steps, pct_start)`` with at least one step in each phase.

    ``OneCycleLR`` divides by the length of its warm-up phase (``pct_start * total - 1`` steps)
    and fails when that is zero, as on very short runs (``--trainer.max_steps 5``): there the
    warm-up is lengthened to one step (and the schedule to three steps at least).
    """
    total_steps = max(total_steps, 3)
    if pct_start > 0:
        pct_start = min(max(pct_start, 2.0 / total_steps), 1.0 - 1.0 / total_steps)
    return total_steps, pct_start


class MultiLabelTask(LightningModule):
    """Multi-label classification with CLIP, trained on labeled images only.

    A cosine classifier on CLIP's global image feature, its class prototypes initialised from
    the class text features (so the untrained model is zero-shot CLIP: ``cssa test`` with this
    task and no checkpoint evaluates zero-shot CLIP). The network is ``self.net``, a plain
    :class:`~cssa_lightning.networks.network.MultiLabelCLIPNet`.

    Args:
        class_names: Ordered class names (linked from the data module by the CLI).
        clip_checkpoint: Hub id or local directory of a CLIP checkpoint.
        prompt_templates: Prompt templates with ``{}`` for the class name, averaged.
        class_prompts: The name a class takes in prompts, by class name, e.g.
            ``{"pottedplant": "potted plant"}``; added to and overriding the built-in names
            (:data:`~cssa_lightning.networks.clip.PROMPT_NAMES`, VOC and COCO). Labels keep their names.
        freeze_vision: Keep the vision tower fixed (train heads only).
        trainable_vision_layers: Train only the last this many vision blocks (with the final
            norm and projection); ``None`` trains the whole vision tower.
        freeze_text: Keep the text tower fixed; class text features are then computed once and
            stored in the checkpoint.
        loss: Supervised loss: asymmetric loss or binary cross-entropy.
        asl_gamma_neg: ASL focusing parameter for negatives.
        asl_gamma_pos: ASL focusing parameter for positives.
        asl_clip: ASL probability margin for negatives.
        asl_detach_focus: No gradient through ASL's focusing weights (CAP's code).
        logit_scale: Initial inverse temperature ``alpha`` of the cosine scores; ``None`` takes
            CLIP's learned value.
        learnable_prototypes: Train the class prototypes (initialised from the class texts);
            ``False`` keeps them equal to the text features.
        calibrate_bias: Before training, set each class bias so that the initial positive rate
            on the labeled split equals the class prior (zero-shot cosines sit in a narrow
            band, so a zero bias would call every class positive).
        calibration_max_images: Labeled images used for the bias calibration.
        lr: Peak learning rate of the CLIP towers (AdamW + OneCycle, stepped per batch).
        head_lr: Peak learning rate of the heads, which start from scratch or from zero-shot.
        layer_lr_decay: Layer-wise learning-rate decay of the CLIP vision tower, in (0, 1]:
            vision block ``i`` of ``L`` peaks at ``lr * layer_lr_decay ** (L - 1 - i)``, the
            patch/position embeddings and the pre-layernorm at ``lr * layer_lr_decay ** L``,
            the post-layernorm and projection (and the text tower) at ``lr``; the heads keep
            ``head_lr``. Fine-tuning a pre-trained ViT moves its early, generic layers less
            than its last ones, so that a small labeled set does not wash out what
            pre-training learned. ``None`` gives every CLIP parameter ``lr``.
        weight_decay: AdamW weight decay (not applied to biases, norms and scales).
        pct_start: Fraction of the schedule spent warming the learning rate up.
        prediction_threshold: Probability threshold of the CF1/OF1 metrics and predictions.
        on_non_finite: What a NaN/inf training loss does: stop the run with an error naming
            the step and the loss terms, or skip the step (no update) and count it as
            ``train/skipped_steps``. Checkpoints with non-finite weights are never written.
        compile_network: Compile the networks' forward passes with ``torch.compile`` when a
            fit starts (in place: parameter names and checkpoints stay as they are). Worth it
            on a GPU for long runs; the first steps pay the compilation.
    """

    # Suffixes of the score sets that ``evaluation_scores`` returns ("" = the model itself).
    evaluated_scores: tuple[str, ...] = ("",)

    def __init__(
        self,
        class_names: list[str],
        clip_checkpoint: str = "openai/clip-vit-base-patch16",
        prompt_templates: list[str] | None = None,
        class_prompts: dict[str, str] | None = None,
        freeze_vision: bool = False,
        trainable_vision_layers: int | None = None,
        freeze_text: bool = True,
        loss: Literal["asl", "bce"] = "asl",
        asl_gamma_neg: float = 4.0,
        asl_gamma_pos: float = 0.0,
        asl_clip: float = 0.05,
        asl_detach_focus: bool = False,
        logit_scale: float | None = None,
        learnable_prototypes: bool = True,
        calibrate_bias: bool = True,
        calibration_max_images: int = 4096,
        lr: float = 1.0e-4,
        head_lr: float = 1.0e-3,
        layer_lr_decay: float | None = None,
        weight_decay: float = 1.0e-4,
        pct_start: float = 0.2,
        prediction_threshold: float = 0.5,
        on_non_finite: Literal["stop", "skip"] = "stop",
        compile_network: bool = False,
    ):
        super().__init__()
        if not class_names:
            raise ValueError("class_names is empty: the model needs at least one class")
        if layer_lr_decay is not None and not 0.0 < layer_lr_decay <= 1.0:
            raise ValueError(f"layer_lr_decay must be in (0, 1] or None, got {layer_lr_decay}")
        self.save_hyperparameters()
        # Checkpoints must load from any folder: a relative local path is stored absolute.
        self.hparams.clip_checkpoint = portable_checkpoint(clip_checkpoint)
        self.class_names = list(class_names)
        self.net = self.build_network()
        self.register_buffer("bias_calibrated", torch.tensor(False))
        self.metrics = nn.ModuleDict(
            {
                split + name: MultiLabelMetrics(
                    self.num_classes, prediction_threshold, class_names=self.class_names
                )
                for split in ("val", "test")
                for name in self.evaluated_scores
            }
        )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def network_options(self) -> dict[str, Any]:
        """Keyword arguments of :class:`MultiLabelCLIPNet` beyond the shared ones."""
        return {}

    def build_network(self) -> MultiLabelCLIPNet:
        """The student network (called once from ``__init__``)."""
        hp = self.hparams
        clip = CLIPBackbone(
            hp.clip_checkpoint,
            hp.freeze_vision,
            hp.freeze_text,
            hp.trainable_vision_layers,
            class_prompts=hp.class_prompts,
        )
        return MultiLabelCLIPNet(
            clip,
            self.class_names,
            hp.prompt_templates or DEFAULT_TEMPLATES,
            logit_scale=hp.logit_scale or clip.logit_scale,
            learnable_prototypes=hp.learnable_prototypes,
            **self.network_options(),
        )

    # -- model -------------------------------------------------------------------------------
    def encode(self, images: Tensor) -> Encoded:
        """Scores and features of a batch of images."""
        return self.net(images)

    def forward(self, images: Tensor) -> Tensor:
        """Label logits ``(B, C)``; ``sigmoid`` gives probabilities."""
        return self.net(images).logits

    def evaluation_scores(self, images: Tensor) -> dict[str, Tensor]:
        """Probabilities to evaluate, by name (the teacher adds its own in ``MeanTeacherTask``)."""
        return {"": torch.sigmoid(self(images))}

    def supervised_loss(
        self, logits: Tensor, targets: Tensor, mask: Tensor | None = None
    ) -> Tensor:
        """ASL or BCE of labeled (or pseudo-labeled, with ``mask``) logits."""
        hp = self.hparams
        if hp.loss == "bce":
            return binary_cross_entropy(logits, targets, mask)
        return asymmetric_loss(
            logits,
            targets,
            hp.asl_gamma_neg,
            hp.asl_gamma_pos,
            hp.asl_clip,
            mask=mask,
            detach_focus=hp.asl_detach_focus,
        )

    # -- checkpoints -------------------------------------------------------------------------
    def check_checkpoint_classes(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint trained on other class names, or on the same in another order.

        Every class-indexed weight (prototypes, biases, thresholds, priors) is stored by
        position, so a different order would silently score each class with another's weights.

        Raises:
            ValueError: Naming the difference and how to fix it.
        """
        trained = list(checkpoint.get("hyper_parameters", {}).get("class_names") or [])
        if not trained or trained == self.class_names:
            return
        if sorted(trained) == sorted(self.class_names):
            moved = [n for n, m in zip(trained, self.class_names, strict=True) if n != m]
            raise ValueError(
                f"the checkpoint was trained on the same {len(trained)} classes in another "
                f"order ({len(moved)} moved, first {moved[0]!r}): pass the checkpoint's order as "
                f"data.init_args.class_names={trained}"
            )
        missing = [n for n in trained if n not in self.class_names]
        extra = [n for n in self.class_names if n not in trained]
        raise ValueError(
            f"the checkpoint's {len(trained)} classes differ from the data's "
            f"{len(self.class_names)}: not in the data {missing[:5]}, not in the checkpoint "
            f"{extra[:5]}"
        )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.check_checkpoint_classes(checkpoint)

    # -- training ----------------------------------------------------------------------------
    def configure_callbacks(self) -> list[Callback]:
        """The task's own callbacks (:meth:`task_callbacks`), each once: a later stage with the
        same trainer (the test after fit) keeps those already attached, so that Lightning has
        nothing to override and says nothing."""
        trainer = self._trainer
        attached = {type(c) for c in trainer.callbacks} if trainer is not None else set()
        return [c for c in self.task_callbacks() if type(c) not in attached]

    def task_callbacks(self) -> list[Callback]:
        """What every fit needs: the guards (:mod:`cssa_lightning.guards`) and the global random
        state in checkpoints (:mod:`cssa_lightning.data.resume`)."""
        return [
            NonFiniteGuard(self.hparams.get("on_non_finite", "stop")),
            RunGuard(),
            GlobalRandomState(),
        ]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        labeled = batch["labeled"]
        logits = self(labeled["image"])
        loss = self.supervised_loss(logits, labeled["target"])
        batch_size = labeled["image"].shape[0]
        self.log("train/loss_sup", loss, on_step=True, on_epoch=True, batch_size=batch_size)
        self.log(
            "train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=batch_size
        )
        return loss

    def compiled_modules(self) -> list[nn.Module]:
        """The modules ``compile_network`` compiles (a subclass adds its own networks)."""
        return [self.net]

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.hparams.get("compile_network", False):
            for module in self.compiled_modules():
                module.compile()

    def on_fit_start(self) -> None:
        if self.hparams.calibrate_bias and not bool(self.bias_calibrated):
            self.calibrate_bias()

    @torch.no_grad()
    def calibrate_bias(self) -> None:
        """Shift each class bias so the predicted positive rate on labeled data is its prior.

        Every process runs the same pass over the same images, so biases agree across devices.
        """
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "labeled_eval_dataloader"):
            log.warning("no labeled_eval_dataloader on the data module: bias not calibrated")
            return
        was_training = self.training
        self.eval()
        logits, targets, seen = [], [], 0
        loader = datamodule.labeled_eval_dataloader()
        batches = math.ceil(self.hparams.calibration_max_images / (loader.batch_size or 1))
        progress = track(
            loader,
            "bias calibration",
            total=min(len(loader), batches),
            disable=not self.trainer.is_global_zero,
        )
        for batch in progress:
            logits.append(self(batch["image"].to(self.device)).float())
            targets.append(batch["target"].to(self.device))
            seen += len(batch["image"])
            if seen >= self.hparams.calibration_max_images:
                break
        progress.close()
        self.train(was_training)
        logits, targets = torch.cat(logits), torch.cat(targets)
        n = len(logits)
        prior = targets.mean(0).clamp(1.0 / (n + 1), n / (n + 1))
        cut = torch.stack(
            [torch.quantile(logits[:, k], 1 - prior[k]) for k in range(self.num_classes)]
        )
        self.net.alignment.bias.sub_(cut)
        self.bias_calibrated.fill_(True)
        log.info("calibrated class biases on %d labeled images", n)

    def parameter_lr(self, name: str) -> float:
        """Peak learning rate of the parameter called ``name`` (override for per-module rates)."""
        hp = self.hparams
        if not name.startswith("net.clip."):
            return hp.head_lr
        decay = hp.get("layer_lr_decay")
        return hp.lr if decay is None else hp.lr * decay ** self.vision_depth(name)

    def vision_depth(self, name: str) -> int:
        """How many vision blocks lie above the CLIP parameter ``name``: ``L - 1 - i`` for
        block ``i`` of ``L``, ``L`` for the embeddings and pre-layernorm, ``0`` for the rest
        (post-layernorm, projection, text tower)."""
        num_blocks = len(self.net.clip.model.vision_model.encoder.layers)
        block = _VISION_BLOCK.search(name)
        if block is not None:
            return num_blocks - 1 - int(block.group(1))
        return num_blocks if any(stem in name for stem in _VISION_STEM) else 0

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
        modules: dict[tuple[float, bool], set[str]] = {}
        for name, parameter in self.named_parameters():
            if not parameter.requires_grad:
                continue
            # No decay for biases, norms and scalar scales.
            key = (self.parameter_lr(name), parameter.ndim >= 2)
            groups.setdefault(key, []).append(parameter)
            parts = name.split(".")
            modules.setdefault(key, set()).add(parts[1] if parts[0] == "net" else parts[0])
        param_groups = [
            {"params": params, "lr": lr, "weight_decay": hp.weight_decay if decays else 0.0}
            for (lr, decays), params in groups.items()
        ]
        # Names LearningRateMonitor and the run report show instead of "pg1" / "group 0": the
        # modules, "no-decay", and a rank when layer-wise rates split a module (no dots, which
        # W&B would read as nesting).
        labels = [
            "+".join(sorted(modules[key])) + ("" if key[1] else " no-decay") for key in groups
        ]
        for group, label, key in zip(param_groups, labels, groups, strict=True):
            same = [k for k, other in zip(groups, labels, strict=True) if other == label]
            same.sort(reverse=True)
            group["name"] = label if len(same) == 1 else f"{label} #{same.index(key) + 1}"
        # The fused kernel (one launch for all parameters) when they all live on a GPU.
        on_cuda = all(p.is_cuda for group in param_groups for p in group["params"])
        optimizer = torch.optim.AdamW(param_groups, fused=True if on_cuda else None)
        total_steps = max(int(self.trainer.estimated_stepping_batches), 1)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": self.learning_rate_scheduler(optimizer, total_steps),
                "interval": "step",
            },
        }

    def learning_rate_scheduler(
        self, optimizer: torch.optim.Optimizer, total_steps: int
    ) -> torch.optim.lr_scheduler.LRScheduler:
        """One OneCycle schedule over the whole run, stepped per batch; each group's ``lr`` is
        its peak."""
        total_steps, pct_start = one_cycle_phases(total_steps, self.hparams.pct_start)
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[group["lr"] for group in optimizer.param_groups],
            total_steps=total_steps,
            pct_start=pct_start,
        )

    # -- evaluation --------------------------------------------------------------------------
    def _evaluation_step(self, batch: dict[str, Tensor], split: str) -> None:
        for name, probs in self.evaluation_scores(batch["image"]).items():
            self.metrics[split + name].update(probs, batch["target"])

    def _log_evaluation(self, split: str) -> None:
        summary = []
        for suffix in self.evaluated_scores:
            metrics = self.metrics[split + suffix]
            values = metrics.compute()
            for name, value in values.items():
                self.log(f"{split}/{name}{suffix}", value, prog_bar=name == "mAP" and not suffix)
            metrics.reset()
            scores = suffix.strip("_") or "model"
            summary.append(
                f"{scores} " + ", ".join(f"{name} {float(v):.2f}" for name, v in values.items())
            )
        trainer = self._trainer
        if trainer is not None and not trainer.sanity_checking and trainer.is_global_zero:
            # One line per evaluation in the console and the run's cssa.log.
            where = f"epoch {self.current_epoch} validation" if split == "val" else split
            log.info("%s: %s", where, "; ".join(summary))

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluation_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_evaluation("val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluation_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_evaluation("test")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """``probs`` (and ``probs_teacher`` for a mean-teacher task) and the batch ``index``."""
        scores = self.evaluation_scores(batch["image"])
        return {
            **{f"probs{name}": probs for name, probs in scores.items()},
            "index": batch["index"],
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # What `cssa predict` / `cssa export` need besides the weights: the task class, and
        # the eval preprocessing of the data module the model was trained with.
        checkpoint["task_class"] = f"{type(self).__module__}.{type(self).__qualname__}"
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
        if datamodule is not None and hasattr(datamodule, "mean"):
            checkpoint["preprocessing"] = {
                "image_size": int(datamodule.hparams.image_size),
                "mean": [float(x) for x in datamodule.mean],
                "std": [float(x) for x in datamodule.std],
            }


def one_cycle_factor(
    step: int, total_steps: int, pct_start: float, div: float = 25.0, final_div: float = 1.0e4
) -> float:
    """``OneCycleLR``'s cosine learning rate at ``step`` as a fraction of the peak: up from
    ``1/div`` to 1 over ``pct_start`` of the steps, then down to ``1/(div * final_div)``."""
    peak_step = max(float(pct_start * total_steps) - 1, 1.0)
    last_step = max(total_steps - 1, peak_step + 1)
    start, low = 1.0 / div, 1.0 / (div * final_div)
    if step <= peak_step:
        start_value, end_value, fraction = start, 1.0, step / peak_step
    else:
        start_value, end_value = 1.0, low
        fraction = min((step - peak_step) / (last_step - peak_step), 1.0)
    return end_value + (start_value - end_value) / 2.0 * (math.cos(math.pi * fraction) + 1)
