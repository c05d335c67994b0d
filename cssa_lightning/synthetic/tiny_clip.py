"""Build small CLIP checkpoints from scratch: a word-level BPE tokenizer and a tiny config.

Used by the tests (a randomly initialised CLIP saved with ``save_pretrained`` and loaded back
through ``from_pretrained``) and by ``scripts/pretrain_tiny_clip.py`` (the shipped CLIP
pre-trained on the synthetic world). Nothing here is needed to use a real checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

# The tiny models reuse OpenAI CLIP's statistics so that every checkpoint in this project
# normalises images the same way (re-exported here for the scripts).
from cssa_lightning.data.transforms import CLIP_MEAN, CLIP_STD

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "build_clip_tokenizer",
    "save_clip_checkpoint",
    "tiny_clip_config",
]

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"


def build_clip_tokenizer(words: Iterable[str]) -> CLIPTokenizer:
    """Train a byte-level BPE on ``words`` so that each word becomes one CLIP token.

    The vocabulary holds the two special tokens (ids 0 and 1), every byte both as a word
    piece and as a word end (``"a"`` and ``"a</w>"``, as in OpenAI's vocabulary) and one token
    per distinct word, so any text tokenizes (unknown words fall back to pieces).

    Args:
        words: The words the tokenizer should know as single tokens (lowercase).

    Returns:
        A ``CLIPTokenizer`` built from the trained vocabulary and merges.
    """
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    corpus = sorted({w.lower() for w in words} | set(alphabet))
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=1_000_000,  # large enough that every word is merged into one token
        special_tokens=[BOS_TOKEN, EOS_TOKEN],
        initial_alphabet=alphabet,
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    # The trainer breaks ties between equally frequent pairs in hash order, which changes from
    # process to process: the learned ids (and with them which embedding row each word gets at
    # initialisation) would differ between runs. Ids in a fixed order (the specials, then the
    # sorted tokens) make every build of the same words the same tokenizer; the merges (which
    # only matter for words outside the vocabulary) are kept as learned.
    vocab: dict[str, int] = model["vocab"]
    ordered = [BOS_TOKEN, EOS_TOKEN] + sorted(set(vocab) - {BOS_TOKEN, EOS_TOKEN})
    return CLIPTokenizer(vocab={token: i for i, token in enumerate(ordered)}, merges=merges)


def tiny_clip_config(
    vocab_size: int,
    image_size: int = 64,
    patch_size: int = 8,
    width: int = 64,
    layers: int = 2,
    heads: int = 2,
    embed_dim: int = 64,
    max_text_length: int = 32,
) -> CLIPConfig:
    """A small ViT CLIP config whose special token ids match :func:`build_clip_tokenizer`."""
    text = dict(
        vocab_size=vocab_size,
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=max_text_length,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    vision = dict(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=embed_dim)


def save_clip_checkpoint(
    model: CLIPModel, tokenizer: CLIPTokenizer, out_dir: str | Path, image_size: int
) -> Path:
    """Save model, tokenizer and image processor so ``from_pretrained(out_dir)`` loads all."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out_dir)
    return out_dir
