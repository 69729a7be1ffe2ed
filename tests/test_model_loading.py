"""MODEL[:PRETRAINED] specs: OpenAI-format files (TorchScript archive and plain state dict) with the
real ViT-B-16.pt key names, safetensors, and the one-sentence errors."""

import json
import logging

import open_clip
import pytest
import torch

from promptkd_ray.core.models import ModelSpec, ModelSpecError, build_student, load_clip

WIDTH, LAYERS, PATCH, IMAGE, EMBED, CONTEXT, VOCAB = 64, 2, 16, 32, 32, 8, 49408
ARCH = "tiny-openai-format-quickgelu"


def _block_keys(prefix, width):
    return {
        f"{prefix}.attn.in_proj_weight": (3 * width, width),
        f"{prefix}.attn.in_proj_bias": (3 * width,),
        f"{prefix}.attn.out_proj.weight": (width, width),
        f"{prefix}.attn.out_proj.bias": (width,),
        f"{prefix}.ln_1.weight": (width,),
        f"{prefix}.ln_1.bias": (width,),
        f"{prefix}.mlp.c_fc.weight": (4 * width, width),
        f"{prefix}.mlp.c_fc.bias": (4 * width,),
        f"{prefix}.mlp.c_proj.weight": (width, 4 * width),
        f"{prefix}.mlp.c_proj.bias": (width,),
        f"{prefix}.ln_2.weight": (width,),
        f"{prefix}.ln_2.bias": (width,),
    }


def openai_state_dict(seed=0):
    """The key names and shapes of OpenAI's ViT-B-16.pt, at tiny sizes, fp16 like the real file."""
    grid = IMAGE // PATCH
    shapes = {
        "visual.class_embedding": (WIDTH,),
        "visual.positional_embedding": (grid * grid + 1, WIDTH),
        "visual.proj": (WIDTH, EMBED),
        "visual.conv1.weight": (WIDTH, 3, PATCH, PATCH),
        "visual.ln_pre.weight": (WIDTH,),
        "visual.ln_pre.bias": (WIDTH,),
        "visual.ln_post.weight": (WIDTH,),
        "visual.ln_post.bias": (WIDTH,),
        "positional_embedding": (CONTEXT, WIDTH),
        "text_projection": (WIDTH, EMBED),
        "token_embedding.weight": (VOCAB, WIDTH),
        "ln_final.weight": (WIDTH,),
        "ln_final.bias": (WIDTH,),
    }
    for i in range(LAYERS):
        shapes.update(_block_keys(f"visual.transformer.resblocks.{i}", WIDTH))
        shapes.update(_block_keys(f"transformer.resblocks.{i}", WIDTH))
    g = torch.Generator().manual_seed(seed)
    sd = {
        k: (
            0.05 * torch.randn(s, generator=g) + (1.0 if k.endswith(("ln_1.weight", "ln_2.weight")) else 0.0)
        ).half()
        for k, s in shapes.items()
    }
    sd["logit_scale"] = torch.tensor(4.6052).half()
    sd["input_resolution"] = torch.tensor(IMAGE)
    sd["context_length"] = torch.tensor(CONTEXT)
    sd["vocab_size"] = torch.tensor(VOCAB)
    return sd


class _Holder(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def save_torchscript_archive(sd, path):
    """A TorchScript archive whose state_dict has exactly `sd`'s names (as OpenAI's released files)."""
    root = _Holder()
    for key, value in sd.items():
        *parents, leaf = key.split(".")
        module = root
        for part in parents:
            if not hasattr(module, part):
                module.add_module(part, _Holder())
            module = getattr(module, part)
        if value.is_floating_point():
            module.register_parameter(leaf, torch.nn.Parameter(value, requires_grad=False))
        else:
            module.register_buffer(leaf, value)
    torch.jit.save(torch.jit.script(root), str(path))


@pytest.fixture(scope="module")
def arch_registered(tmp_path_factory):
    folder = tmp_path_factory.mktemp("configs")
    (folder / f"{ARCH}.json").write_text(
        json.dumps(
            {
                "embed_dim": EMBED,
                "quick_gelu": True,
                "vision_cfg": {"image_size": IMAGE, "layers": LAYERS, "width": WIDTH, "patch_size": PATCH},
                "text_cfg": {
                    "context_length": CONTEXT,
                    "vocab_size": VOCAB,
                    "width": WIDTH,
                    "heads": WIDTH // 64,
                    "layers": LAYERS,
                },
            }
        )
    )
    open_clip.add_model_config(folder)
    return ARCH


@pytest.mark.parametrize("fmt", ["torchscript", "state_dict"])
def test_openai_file_loads_like_open_clip_does(arch_registered, tmp_path, fmt):
    sd = openai_state_dict()
    path = tmp_path / "clip" / "ViT-B-16.pt"
    path.parent.mkdir()
    if fmt == "torchscript":
        save_torchscript_archive(sd, path)
        assert isinstance(torch.jit.load(str(path)), torch.jit.ScriptModule)
    else:
        torch.save(sd, path)
    ours = load_clip(f"{arch_registered}:{path}")
    reference = open_clip.load_openai_model(str(path), precision="fp32", device="cpu").eval()
    images = torch.randn(2, 3, IMAGE, IMAGE)
    tokens = open_clip.tokenize(["a photo of a dog.", "a cat"], context_length=CONTEXT)
    with torch.no_grad():
        assert torch.equal(ours.encode_image(images), reference.encode_image(images))
        assert torch.allclose(ours.encode_text(tokens), reference.encode_text(tokens), atol=1e-6)
    assert torch.equal(ours.visual.conv1.weight, sd["visual.conv1.weight"].float())

    # the same path a user's `--student ViT-B-16-quickgelu:./clip/ViT-B-16.pt` takes
    student = build_student(f"{arch_registered}:{path}", teacher_dim=48, depth=0, projector="linear")
    with torch.no_grad():  # frozen (requires_grad=False) weights may take MHA's fused path: ≤ 1 ulp apart
        assert torch.allclose(student.image_encoder(images), reference.visual(images), atol=1e-6)


def test_safetensors_and_dassl_style_checkpoints_load(arch_registered, tmp_path):
    from safetensors.torch import save_file

    sd = {k: v.float() for k, v in openai_state_dict(seed=3).items() if v.is_floating_point()}
    save_file(sd, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}, "epoch": 3}, tmp_path / "w.pth.tar")
    a = load_clip(f"{arch_registered}:{tmp_path / 'w.safetensors'}")
    b = load_clip(f"{arch_registered}:{tmp_path / 'w.pth.tar'}")
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_spec_parsing():
    assert ModelSpec.parse("ViT-B-16-quickgelu:/data/clip/ViT-B-16.pt") == ModelSpec(
        "ViT-B-16-quickgelu", "/data/clip/ViT-B-16.pt"
    )
    assert ModelSpec.parse("ViT-L-14") == ModelSpec("ViT-L-14", None)
    assert str(ModelSpec.parse("ViT-H-14-quickgelu:dfn5b")) == "ViT-H-14-quickgelu:dfn5b"


def test_unknown_model_name_is_one_sentence():
    with pytest.raises(ModelSpecError, match="Unknown open_clip model 'ViT-Q-99'"):
        load_clip("ViT-Q-99:openai")


def test_missing_weights_file_is_one_sentence(tmp_path):
    with pytest.raises(ModelSpecError, match="does not exist"):
        load_clip(f"tiny-vit-student:{tmp_path / 'nope.pt'}")


def test_unknown_tag_is_one_sentence():
    with pytest.raises(ModelSpecError, match="neither an existing weights file nor a pretrained tag"):
        load_clip("ViT-B-16:not_a_tag")


def test_weights_that_do_not_fit_the_config_are_refused(arch_registered, tmp_path):
    path = tmp_path / "ViT-B-16.pt"
    torch.save(openai_state_dict(), path)
    with pytest.raises(ModelSpecError, match="do not fit the model config: .*shape mismatches"):
        load_clip(f"tiny-vit-student:{path}")


def test_corrupt_weights_file_is_one_sentence(tmp_path):
    path = tmp_path / "broken.pt"
    path.write_bytes(b"\x80\x02not a checkpoint at all")
    with pytest.raises(ModelSpecError, match="is not readable"):
        load_clip(f"tiny-vit-student:{path}")


def test_loading_a_weights_file_does_not_warn_of_random_init(tmp_path, caplog):
    from safetensors.torch import save_file

    with caplog.at_level("WARNING"):
        model = load_clip("tiny-vit-student")  # no weights: open_clip's warning is right and stays
    assert "initialized randomly" in caplog.text
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    caplog.clear()
    with caplog.at_level("WARNING"):
        load_clip(f"tiny-vit-student:{tmp_path / 'w.safetensors'}")
    assert "initialized randomly" not in caplog.text
    assert not logging.getLogger().filters  # the filter is gone again


def test_open_clip_info_chatter_shows_only_at_debug(caplog):
    from promptkd_ray.core.models import get_tokenizer

    def open_clip_records(level):
        caplog.clear()
        with caplog.at_level(level):
            load_clip("tiny-vit-student")
            get_tokenizer("tiny-vit-student")
        return [
            r.getMessage()
            for r in caplog.records
            if "open_clip" in r.pathname and r.levelno < logging.WARNING
        ]

    assert open_clip_records("INFO") == []
    at_debug = open_clip_records("DEBUG")
    assert any("Instantiating model architecture" in m for m in at_debug)
    assert any("tokenizer" in m for m in at_debug)
    assert not logging.getLogger().filters
