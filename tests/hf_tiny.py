"""Tiny random Hugging Face models on disk for the merge tests (nothing is downloaded): a base
saved with ``save_pretrained`` (and a tokenizer / processor where the family has one), and
fine-tuned copies whose floating-point weights are the base's plus small seeded noise."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "merge", "model", "the"]


def _tokenizer_dir(root: Path) -> Path:
    """A BERT WordPiece vocabulary file to build tokenizers from."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    return root / "vocab.txt"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-to-unicode table (written from its definition)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def byte_level_clip_tokenizer(root: Path):
    """A ``CLIPTokenizer`` whose vocabulary is the 512 byte-level characters (with and without
    ``</w>``) and no merges, written to ``root`` (no hub vocabulary is needed); returns the
    tokenizer, its vocabulary size and its bos and eos ids."""
    import json

    from transformers import CLIPTokenizer

    chars = sorted(set(_bytes_to_unicode().values()))
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    bos, eos = len(vocab), len(vocab) + 1
    vocab.update({"<|startoftext|>": bos, "<|endoftext|>": eos})
    root.mkdir(parents=True, exist_ok=True)
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt"))
    return tokenizer, len(vocab), bos, eos


def save_bert(path: Path, seed: int = 0) -> Path:
    """A 2-layer, 32-wide BertModel with its tokenizer."""
    from transformers import BertConfig, BertModel, BertTokenizer

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=16,
    )
    BertModel(config).eval().save_pretrained(path)
    BertTokenizer(vocab_file=str(_tokenizer_dir(path.parent / "vocab"))).save_pretrained(path)
    return path


def save_clip(path: Path, seed: int = 0) -> Path:
    """A tiny CLIPModel (text and vision towers of width 32) with its image processor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={
            "vocab_size": 40,
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 16,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 0,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 16,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    CLIPModel(config).eval().save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 16}, crop_size=16).save_pretrained(path)
    return path


def save_gpt2(path: Path, seed: int = 0) -> Path:
    """A 2-layer GPT2LMHeadModel (tied embeddings, Conv1D layers) with a generation config."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=2)
    model = GPT2LMHeadModel(config).eval()
    model.generation_config.max_new_tokens = 4
    model.save_pretrained(path)
    return path


def save_llama(path: Path, seed: int = 0) -> Path:
    """A 2-layer LlamaForCausalLM of width 32 (untied head)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).eval().save_pretrained(path)
    return path


def finetune_copies(base: Path, root: Path, n: int, scale: float = 0.02) -> list[Path]:
    """``n`` copies of the HF directory ``base`` whose floating-point weights move by seeded
    noise of size ``scale`` (the same files otherwise)."""
    weights = load_file(base / "model.safetensors")
    g = torch.Generator().manual_seed(123)
    out = []
    for i in range(n):
        d = root / f"ft{i}"
        shutil.copytree(base, d)
        moved = {
            k: v + scale * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
            for k, v in weights.items()
        }
        save_file(moved, d / "model.safetensors", {"format": "pt"})
        out.append(d)
    return out


def reference_merge(base: Path, fts: list[Path], lam: float) -> dict[str, torch.Tensor]:
    """``theta_base + lam * sum_q (theta_q - theta_base)`` with plain torch, key by key."""
    b = load_file(base / "model.safetensors")
    models = [load_file(f / "model.safetensors") for f in fts]
    return {
        k: v + lam * sum(m[k] - v for m in models) if v.is_floating_point() else v
        for k, v in b.items()
    }
