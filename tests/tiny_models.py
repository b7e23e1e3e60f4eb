"""Tiny random-weight image-text models for offline tests (nothing is downloaded).

`save_tiny(folder, kind)` builds a CLIP or SigLIP model from a transformers config (2
layers, width 32, 32 px images, patch 8) with a byte-level tokenizer (vocabulary: the 256
byte symbols, the same with `</w>`, and the start/end tokens; no merges) and saves model +
processor with save_pretrained, so AutoModel / AutoProcessor load them from the folder.
SigLIP's own tokenizer needs a SentencePiece model file that cannot be built offline here,
so the tiny SigLIP carries the same byte-level CLIP tokenizer: what the tests exercise is
SigLIP's model class, its processor (squash resize, mean 0.5) and the max-length padding.
"""

from __future__ import annotations

from pathlib import Path

START, END = "<|startoftext|>", "<|endoftext|>"
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=64)
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
              image_size=32, patch_size=8)


def byte_tokenizer():
    """A CLIPTokenizer over single bytes (transformers 5.x: tables passed directly)."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    symbols = sorted(ByteLevel.alphabet())
    tokens = symbols + [s + "</w>" for s in symbols] + [START, END]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[])


def save_tiny(folder: str | Path, kind: str = "clip", seed: int = 0) -> Path:
    """Build and save a tiny random-weight `kind` ("clip" or "siglip") model + processor
    into folder; returns the folder."""
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
    text = dict(TEXT, vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    if kind == "clip":
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=VISION, projection_dim=16))
        images = CLIPImageProcessor(size={"shortest_edge": 32},
                                    crop_size={"height": 32, "width": 32})
        processor = CLIPProcessor(image_processor=images, tokenizer=tok)
    elif kind == "siglip":
        model = SiglipModel(SiglipConfig(text_config=text, vision_config=VISION))
        processor = SiglipProcessor(image_processor=SiglipImageProcessor(
            size={"height": 32, "width": 32}), tokenizer=tok)
    else:
        raise ValueError(f"kind={kind!r} (clip or siglip)")
    folder = Path(folder)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
