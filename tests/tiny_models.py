"""Tiny random-weight image-text models for offline tests (nothing is downloaded).

`save_tiny(folder, kind)` builds a CLIP or SigLIP model from a transformers config (2
layers, width 32, 32 px images, patch 8) with a byte-level tokenizer (vocabulary: the 256
byte symbols, the same with `</w>`, and the start/end tokens; no merges) and saves model +
processor with save_pretrained, so AutoModel / AutoProcessor load them from the folder.
SigLIP's own tokenizer needs a SentencePiece model file that cannot be built offline here,
so the tiny SigLIP carries the same byte-level CLIP tokenizer: what the tests exercise is
SigLIP's model class, its processor (squash resize, mean 0.5) and the max-length padding.
`size="so400m"` builds SigLIP at the So400m/16 @256 dims of the default vl_model
(google/siglip2-so400m-patch16-256, both towers; about 0.8 B random parameters) for
bench/rehearsal.py: the real architecture's cost, none of its accuracy.
"""

from __future__ import annotations

from pathlib import Path

START, END = "<|startoftext|>", "<|endoftext|>"
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=64)
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
              image_size=32, patch_size=8)
# google/siglip2-so400m-patch16-256's config.json (text and vision towers share the dims)
SO400M = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
              num_attention_heads=16)
SIZES = {"tiny": (TEXT, VISION),
         "so400m": (dict(SO400M, max_position_embeddings=64),
                    dict(SO400M, image_size=256, patch_size=16))}


def byte_tokenizer():
    """A CLIPTokenizer over single bytes (transformers 5.x: tables passed directly)."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    symbols = sorted(ByteLevel.alphabet())
    tokens = symbols + [s + "</w>" for s in symbols] + [START, END]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[])


def save_tiny(folder: str | Path, kind: str = "clip", seed: int = 0, size: str = "tiny",
              device: str = "cpu") -> Path:
    """Build and save a random-weight `kind` ("clip" or "siglip") model + processor of
    `size` (a key of SIZES) into folder; returns the folder. device: where the weights are
    initialised ("cuda" makes the 0.8 B of "so400m" seconds instead of a minute); saved as
    float16 when not tiny (half the bytes; open_sources casts as the runtime needs)."""
    import torch
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        SiglipConfig,
        SiglipImageProcessor,
        SiglipModel,
        SiglipProcessor,
    )

    torch.manual_seed(seed)
    tok = byte_tokenizer()
    text_dims, vision = SIZES[size]
    side = vision["image_size"]
    text = dict(text_dims, vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    if kind == "clip":
        with torch.device(device):
            model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision,
                                         projection_dim=16))
        images = CLIPImageProcessor(size={"shortest_edge": side},
                                    crop_size={"height": side, "width": side})
        processor = CLIPProcessor(image_processor=images, tokenizer=tok)
    elif kind == "siglip":
        with torch.device(device):
            model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision))
        processor = SiglipProcessor(image_processor=SiglipImageProcessor(
            size={"height": side, "width": side}), tokenizer=tok)
    else:
        raise ValueError(f"kind={kind!r} (clip or siglip)")
    if size != "tiny":
        model.half()
    folder = Path(folder)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
