"""PEFT LoRA adapters as fine-tuned models: an adapter directory's task vector plus its base is
what peft's own ``merge_and_unload`` gives (linear, GPT-2's Conv1D, embeddings, convolutions,
rank / alpha patterns, rsLoRA, modules_to_save); adapters merge like fine-tuned models on the
command line; what cannot be turned into an exact task vector is refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hf_tiny import finetune_copies, save_bert, save_clip, save_gpt2, save_llama
from rmtllmf.cli import main
from rmtllmf.errors import CheckpointError, InputError
from rmtllmf.fusion import TaskVector

peft = pytest.importorskip("peft")


def _adapter(base: Path, cls, out: Path, seed: int = 0, **lora) -> dict[str, torch.Tensor]:
    """Train nothing: a LoRA with random (non-zero) A and B on ``base``, saved to ``out``;
    returns peft's merge_and_unload state dict (the fine-tuned model the adapter stands for)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = cls.from_pretrained(base).eval()
    config = LoraConfig(init_lora_weights=False, **lora)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "modules_to_save" in name:
                p.add_(0.1 * torch.randn_like(p))
    peft_model.save_pretrained(out)
    return {k: v.detach().clone() for k, v in peft_model.merge_and_unload().state_dict().items()}


def _check_against_peft(base: Path, adapter: Path, merged: dict[str, torch.Tensor]) -> None:
    tv = TaskVector.from_models(base, adapter)
    weights = load_file(base / "model.safetensors")
    assert any(v.abs().max() > 0 for v in tv.tensors.values())
    for k, v in weights.items():
        expected = merged[k]
        got = v + tv.tensors[k] if k in tv.tensors else v
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.parametrize(
    ("family", "lora"),
    [
        (
            "llama",
            {
                "r": 4,
                "lora_alpha": 8,
                "target_modules": ["q_proj", "v_proj", "down_proj"],
                "rank_pattern": {"down_proj": 2},
                "alpha_pattern": {"layers.1.self_attn.v_proj": 3},
            },
        ),
        (
            "gpt2",
            {"r": 3, "lora_alpha": 6, "target_modules": ["c_attn", "wte"], "fan_in_fan_out": True},
        ),
        (
            "bert",
            {
                "r": 4,
                "lora_alpha": 4,
                "use_rslora": True,
                "target_modules": ["query", "value"],
                "modules_to_save": ["pooler.dense"],
                "bias": "lora_only",
            },
        ),
        ("clip", {"r": 2, "lora_alpha": 5, "target_modules": ["patch_embedding", "q_proj"]}),
    ],
)
def test_adapter_task_vector_equals_peft_merge_and_unload(tmp_path, family, lora):
    from transformers import BertModel, CLIPModel, GPT2LMHeadModel, LlamaForCausalLM

    save, cls = {
        "llama": (save_llama, LlamaForCausalLM),
        "gpt2": (save_gpt2, GPT2LMHeadModel),
        "bert": (save_bert, BertModel),
        "clip": (save_clip, CLIPModel),
    }[family]
    base = save(tmp_path / "base")
    merged = _adapter(base, cls, tmp_path / "lora", **lora)
    _check_against_peft(base, tmp_path / "lora", merged)


def test_adapters_merge_on_the_command_line_like_fine_tuned_models(tmp_path):
    """Two LoRA adapters and a full fine-tuned model, task arithmetic into an HF directory:
    from_pretrained gives theta_base + lambda (tau_a + tau_b + tau_c), each tau from peft's
    merge_and_unload (or the checkpoint) minus the base."""
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    base = save_llama(tmp_path / "base")
    lora = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "o_proj", "up_proj"]}
    fine = [_adapter(base, LlamaForCausalLM, tmp_path / f"lora{i}", seed=i, **lora) for i in (1, 2)]
    (full,) = finetune_copies(base, tmp_path / "full", 1)
    out = tmp_path / "merged"
    args = ["merge", "--base", str(base), "--models", str(tmp_path / "lora1")]
    args += [str(tmp_path / "lora2"), str(full), "--lambda", "0.5", "--out", str(out)]
    assert main(args) == 0
    b = load_file(base / "model.safetensors")
    f = load_file(full / "model.safetensors")
    reference = {
        k: v + 0.5 * ((fine[0][k] - v) + (fine[1][k] - v) + (f[k] - v)) for k, v in b.items()
    }
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    got = model.state_dict()
    for k, v in reference.items():
        torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-6, msg=k)
    ref_model = LlamaForCausalLM.from_pretrained(base).eval()
    ref_model.load_state_dict(reference, strict=False)
    ids = torch.tensor([[1, 5, 9, 2]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref_model(ids).logits)


def test_adapter_for_the_inner_model_maps_to_the_head_models_keys(tmp_path):
    """An adapter trained on GPT2Model (keys h.0...) merged into a GPT2LMHeadModel base (keys
    transformer.h.0...): the names are matched by their ending."""
    from transformers import GPT2Model

    base = save_gpt2(tmp_path / "base")
    inner = tmp_path / "inner"
    GPT2Model.from_pretrained(base).save_pretrained(inner)
    merged = _adapter(inner, GPT2Model, tmp_path / "lora", r=2, lora_alpha=2,
                      target_modules=["c_fc"], fan_in_fan_out=True)  # fmt: skip
    tv = TaskVector.from_models(base, tmp_path / "lora")
    weights = load_file(base / "model.safetensors")
    key = "transformer.h.1.mlp.c_fc.weight"
    torch.testing.assert_close(weights[key] + tv.tensors[key], merged["h.1.mlp.c_fc.weight"])


def _edit_config(adapter: Path, **changes) -> None:
    path = adapter / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


@pytest.fixture(scope="module")
def llama_lora(tmp_path_factory):
    from transformers import LlamaForCausalLM

    root = tmp_path_factory.mktemp("lora")
    base = save_llama(root / "base")
    _adapter(base, LlamaForCausalLM, root / "lora", r=2, lora_alpha=4, target_modules=["q_proj"])
    return base, root / "lora"


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"peft_type": "LOHA"}, "only LoRA adapters"),
        ({"peft_type": "IA3"}, "only LoRA adapters"),
        ({"use_dora": True}, "DoRA"),
        ({"init_lora_weights": "pissa"}, "changes the base weights"),
        ({"init_lora_weights": "olora"}, "changes the base weights"),
        ({"lora_bias": True}, "lora_bias"),
        ({"r": 3}, "rank 2 in its weights but 3"),
    ],
)
def test_unsupported_adapters_are_refused_by_name(tmp_path, llama_lora, capsys, change, words):
    import shutil

    base, lora = llama_lora
    adapter = tmp_path / "adapter"
    shutil.copytree(lora, adapter)
    _edit_config(adapter, **change)
    with pytest.raises((InputError, CheckpointError), match=words):
        TaskVector.from_models(base, adapter)
    out = tmp_path / "merged.safetensors"
    assert main(["merge", "--base", str(base), "--models", str(adapter), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert words.split()[0] in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_dora_weights_are_refused_even_without_the_flag(tmp_path, llama_lora):
    base, lora = llama_lora
    adapter = tmp_path / "adapter"
    import shutil

    shutil.copytree(lora, adapter)
    weights = load_file(adapter / "adapter_model.safetensors")
    name = next(k for k in weights if "lora_A" in k).replace(
        "lora_A.weight", "lora_magnitude_vector"
    )
    weights[name] = torch.ones(32)
    save_file(weights, adapter / "adapter_model.safetensors")
    with pytest.raises(InputError, match="not a plain LoRA factor"):
        TaskVector.from_models(base, adapter)


def test_adapter_for_another_base_is_refused(tmp_path, llama_lora):
    _, lora = llama_lora
    other = save_gpt2(tmp_path / "gpt2")
    with pytest.raises(CheckpointError, match="has no tensor for the adapter"):
        TaskVector.from_models(other, lora)


def test_adapter_with_nan_is_refused_with_file_and_key(tmp_path, llama_lora, capsys):
    import shutil

    base, lora = llama_lora
    adapter = tmp_path / "adapter"
    shutil.copytree(lora, adapter)
    weights = load_file(adapter / "adapter_model.safetensors")
    key = next(k for k in weights if "lora_B" in k)
    weights[key][0, 0] = float("nan")
    save_file(weights, adapter / "adapter_model.safetensors")
    out = tmp_path / "merged"
    assert main(["merge", "--base", str(base), "--models", str(adapter), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "adapter_model.safetensors" in err and key in err and "NaN" in err
    assert not out.exists()
