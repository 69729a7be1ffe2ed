"""Official checkpoints → our modules, checked against an independent reference written here.

The tests write checkpoints in exactly the authors' key layout (docs/protocol.md, "Official checkpoint
formats") at tiny sizes — Dassl dicts that also pickle an SGD optimizer and a warm-up scheduler
holding a `CosineAnnealingLR` object, the `module.` prefix variant, fp16 tensors — and a base CLIP
as a TorchScript archive and as a plain state dict. The reference forward below uses only the raw
tensors and torch functionals (no open_clip module, none of ours).
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from promptkd_ray.interop import (
    OfficialCheckpointError,
    checkpoint_kind,
    load_official_student,
    load_official_teacher,
)

HEAD_WIDTH = 16  # tiny towers: width 32 → 2 heads (student), width 64 → 4 heads (teacher)
CLASSNAMES = ["red_star", "blue circle", "green_pointy_triangle"]
TOL = 1e-5


# ----------------------------------------------------------------------------- independent reference
def ln(x, sd, p):
    return F.layer_norm(x, x.shape[-1:], sd[p + ".weight"], sd[p + ".bias"], 1e-5)


def attention(x, sd, p, heads, mask=None):  # x [B, L, W]
    b, n, w = x.shape
    q, k, v = (x @ sd[p + ".in_proj_weight"].t() + sd[p + ".in_proj_bias"]).chunk(3, dim=-1)
    q, k, v = (t.reshape(b, n, heads, w // heads).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(w // heads)
    if mask is not None:
        scores = scores + mask
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, w)
    return out @ sd[p + ".out_proj.weight"].t() + sd[p + ".out_proj.bias"]


def residual_block(x, sd, p, heads, mask=None):
    x = x + attention(ln(x, sd, p + ".ln_1"), sd, p + ".attn", heads, mask)
    h = ln(x, sd, p + ".ln_2") @ sd[p + ".mlp.c_fc.weight"].t() + sd[p + ".mlp.c_fc.bias"]
    h = h * torch.sigmoid(1.702 * h)  # QuickGELU
    return x + h @ sd[p + ".mlp.c_proj.weight"].t() + sd[p + ".mlp.c_proj.bias"]


def reference_image(images, sd, p, layers, heads, depth):
    """docs/protocol.md: VPT appended after patch tokens (after pos. emb., before ln_pre); the last n_ctx
    tokens replaced by VPT_shallow before blocks 1 … depth-1; ln_post(CLS) @ proj."""
    conv = sd[p + "conv1.weight"]
    x = F.conv2d(images, conv, stride=conv.shape[-1]).flatten(2).transpose(1, 2)  # [B, grid², W]
    x = torch.cat([sd[p + "class_embedding"].expand(len(x), 1, -1), x], 1) + sd[p + "positional_embedding"]
    n_ctx = sd[p + "VPT"].shape[0]
    x = ln(torch.cat([x, sd[p + "VPT"].expand(len(x), -1, -1)], 1), sd, p + "ln_pre")
    for i in range(layers):
        if 1 <= i < depth:
            x = torch.cat(
                [x[:, :-n_ctx], sd[f"{p}transformer.resblocks.{i}.VPT_shallow"].expand(len(x), -1, -1)], 1
            )
        x = residual_block(x, sd, f"{p}transformer.resblocks.{i}", heads)
    return ln(x[:, 0], sd, p + "ln_post") @ sd[p + "proj"]


def reference_projector(feat, sd, p="VPT_image_trans.conv1."):
    """Conv1x1 → BatchNorm (eval: running stats) → ReLU → Conv1x1, as matrices."""
    h = feat @ sd[p + "0.weight"][:, :, 0, 0].t() + sd[p + "0.bias"]
    h = (h - sd[p + "1.running_mean"]) / torch.sqrt(sd[p + "1.running_var"] + 1e-5)
    h = h * sd[p + "1.weight"] + sd[p + "1.bias"]
    return h.relu() @ sd[p + "3.weight"][:, :, 0, 0].t() + sd[p + "3.bias"]


def reference_text(classnames, sd, token_embedding, layers, heads, depth):
    """ctx at positions 1 … n_ctx of "a photo of a {name}." (`_` → space); deep text prompts replace
    those positions before blocks 1 … depth-1; causal mask; ln_final at EOT (argmax id) @ projection."""
    from open_clip.tokenizer import SimpleTokenizer

    p = "text_encoder."
    ctx = sd["prompt_learner.ctx"]
    n_ctx, length = ctx.shape[0], sd[p + "positional_embedding"].shape[0]
    tokens = SimpleTokenizer(context_length=length)(
        [f"a photo of a {c.replace('_', ' ')}." for c in classnames]
    )
    x = token_embedding[tokens].clone()
    x[:, 1 : 1 + n_ctx] = ctx
    x = x + sd[p + "positional_embedding"]
    mask = torch.full((length, length), float("-inf")).triu(1)
    for i in range(layers):
        if 1 <= i < depth:
            x[:, 1 : 1 + n_ctx] = sd[f"{p}transformer.resblocks.{i}.VPT_shallow"]
        x = residual_block(x, sd, f"{p}transformer.resblocks.{i}", heads, mask)
    x = ln(x, sd, p + "ln_final")
    return x[torch.arange(len(x)), tokens.argmax(-1)] @ sd[p + "text_projection"]


# ----------------------------------------------------------------------------- checkpoints, authors' layout
def tower(gen, p, width, layers, extra=None):
    """OpenAI transformer-block weights under prefix p (random, well-conditioned)."""

    def r(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen) * scale

    def norm(name):
        return {name + ".weight": 1 + r(width, scale=0.1), name + ".bias": r(width, scale=0.1)}

    sd = {}
    for k in range(layers):
        b = f"{p}transformer.resblocks.{k}."
        for name, (rows, cols) in {
            "attn.in_proj": (3 * width, width),
            "attn.out_proj": (width, width),
            "mlp.c_fc": (4 * width, width),
            "mlp.c_proj": (width, 4 * width),
        }.items():
            key = b + ("attn.in_proj_" if name == "attn.in_proj" else name + ".")
            sd[key + "weight"] = r(rows, cols, scale=cols**-0.5)
            sd[key + "bias"] = r(rows, scale=0.1)
        sd.update({**norm(b + "ln_1"), **norm(b + "ln_2")})
    for name in extra or ():
        sd.update(norm(p + name))
    return sd


def vit(gen, p, width, layers, out_dim, patch=8, grid=4):
    sd = tower(gen, p, width, layers, extra=("ln_pre", "ln_post"))
    sd[p + "conv1.weight"] = torch.randn(width, 3, patch, patch, generator=gen) * 0.05
    sd[p + "class_embedding"] = torch.randn(width, generator=gen) * width**-0.5
    sd[p + "positional_embedding"] = torch.randn(grid * grid + 1, width, generator=gen) * width**-0.5
    sd[p + "proj"] = torch.randn(width, out_dim, generator=gen) * width**-0.5
    return sd


def prompts(gen, p, first_key, n_ctx, width, depth):
    sd = {first_key: torch.randn(n_ctx, width, generator=gen)}
    sd.update(
        {
            f"{p}transformer.resblocks.{i}.VPT_shallow": torch.randn(n_ctx, width, generator=gen)
            for i in range(1, depth)
        }
    )
    return sd


def student_state_dict(depth=2):
    """ViT width 32, 3 layers, 32 px / patch 8, out 32; n_ctx 2; projector 32 → 48 with BN stats."""
    gen = torch.Generator().manual_seed(1)
    sd = vit(gen, "image_encoder.", 32, 3, 32)
    sd.update(prompts(gen, "image_encoder.", "image_encoder.VPT", 2, 32, depth))
    p = "VPT_image_trans.conv1."

    def r(*shape, scale):
        return torch.randn(*shape, generator=gen) * scale

    sd.update(
        {
            p + "0.weight": r(48, 32, 1, 1, scale=0.2),
            p + "0.bias": r(48, scale=0.1),
            p + "1.weight": 1 + r(48, scale=0.1),
            p + "1.bias": r(48, scale=0.1),
            p + "1.running_mean": r(48, scale=0.3),
            p + "1.running_var": torch.rand(48, generator=gen) + 0.5,
            p + "1.num_batches_tracked": torch.tensor(1234),
            p + "3.weight": r(48, 48, 1, 1, scale=0.15),
            p + "3.bias": r(48, scale=0.1),
            "logit_scale": torch.tensor(4.2),
        }
    )
    return sd


def base_clip_state_dict(text_width=64, seed=3):
    """A full OpenAI-named CLIP (visual width 64, text width `text_width`, context 16, 49,408 tokens)."""
    gen = torch.Generator().manual_seed(seed)
    sd = vit(gen, "visual.", 64, 3, 48)
    sd.update(tower(gen, "", text_width, 2, extra=("ln_final",)))
    sd.update(
        {
            "token_embedding.weight": torch.randn(49408, text_width, generator=gen) * 0.1,
            "positional_embedding": torch.randn(16, text_width, generator=gen) * 0.1,
            "text_projection": torch.randn(text_width, 48, generator=gen) * text_width**-0.5,
            "logit_scale": torch.tensor(math.log(100.0)),
            "input_resolution": torch.tensor(32),
            "context_length": torch.tensor(16),
            "vocab_size": torch.tensor(49408),
        }
    )
    return sd


def teacher_state_dict(base):
    """PromptSRC teacher: towers copied from the base CLIP (frozen), vision depth 3, text depth 2, n_ctx 4."""
    gen = torch.Generator().manual_seed(2)
    sd = {
        "image_encoder." + k[len("visual.") :]: v.clone() for k, v in base.items() if k.startswith("visual.")
    }
    sd.update(prompts(gen, "image_encoder.", "image_encoder.VPT", 4, 64, 3))
    for key in ("positional_embedding", "text_projection", "ln_final.weight", "ln_final.bias"):
        sd["text_encoder." + key] = base[key].clone()
    sd.update({"text_encoder." + k: v.clone() for k, v in base.items() if k.startswith("transformer.")})
    sd.update(prompts(gen, "text_encoder.", "prompt_learner.ctx", 4, 64, 2))
    sd.update(
        {
            "prompt_learner.token_prefix": torch.randn(7, 1, 64),
            "prompt_learner.token_suffix": torch.randn(7, 11, 64),
            "prompt_learner.ZS_image_encoder.conv1.weight": torch.randn(64, 3, 8, 8),
            "logit_scale": torch.tensor(4.4),
        }
    )
    return sd


def dassl_checkpoint(state_dict, prefix=""):
    """What Dassl's save_checkpoint writes, incl. a pickled optimizer and warm-up/cosine scheduler."""
    param = torch.nn.Parameter(torch.randn(4, 8))
    optimizer = torch.optim.SGD([param], lr=0.005, momentum=0.9)
    param.sum().backward()
    optimizer.step()
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 20)
    scheduler = {
        "successor": cosine,
        "warmup_epoch": 1,
        "cons_lr": 1e-5,
        "base_lrs": [0.005],
        "last_epoch": 20,
    }
    return {
        "state_dict": {prefix + k: v for k, v in state_dict.items()},
        "epoch": 20,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler,
        "val_result": 81.25,
    }


def save_torchscript(state_dict, path):
    """A TorchScript archive whose state dict has OpenAI's key names, like the released ViT-*.pt."""

    class Holder(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    root = Holder()
    for key, value in state_dict.items():
        *parents, leaf = key.split(".")
        module = root
        for name in parents:
            if not hasattr(module, name):
                module.add_module(name, Holder())
            module = getattr(module, name)
        if value.is_floating_point():
            module.register_parameter(leaf, torch.nn.Parameter(value, requires_grad=False))
        else:
            module.register_buffer(leaf, value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(root).save(str(path))


def assert_one_sentence(message: str) -> None:
    assert "\n" not in message and message.endswith(".") and len(message) < 400, message


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def base_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip")
    base = base_clip_state_dict()
    save_torchscript(base, root / "ViT-tiny.pt")
    torch.save(base, root / "ViT-tiny-state.pt")
    return base, root / "ViT-tiny.pt", root / "ViT-tiny-state.pt"


# ----------------------------------------------------------------------------- student
@pytest.mark.parametrize("layout", ["dassl", "module_prefix", "bare_fp16"])
def test_official_student_matches_reference(tmp_path, images, layout):
    sd = student_state_dict()
    if layout == "bare_fp16":  # the authors train in fp16; a bare state dict is accepted too
        sd = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
        torch.save(sd, tmp_path / "model-best.pth.tar")
    else:
        torch.save(
            dassl_checkpoint(sd, "module." if layout == "module_prefix" else ""),
            tmp_path / "model-best.pth.tar",
        )
    official = load_official_student(tmp_path / "model-best.pth.tar", head_width=HEAD_WIDTH)

    ref_sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    with torch.no_grad():
        ours = official.encode_image(images)
        feat = reference_image(images, ref_sd, "image_encoder.", layers=3, heads=2, depth=2)
        ref = F.normalize(reference_projector(feat, ref_sd), dim=-1)
    assert not official.training and ours.shape == (3, 48)
    assert (ours - ref).abs().max().item() <= TOL
    assert official.logit_scale == pytest.approx(math.exp(float(ref_sd["logit_scale"])), rel=1e-6)
    arch = official.arch
    assert (
        arch.width,
        arch.layers,
        arch.heads,
        arch.patch_size,
        arch.image_size,
        arch.n_ctx,
        arch.depth,
    ) == (32, 3, 2, 8, 32, 2, 2)
    # the comparison can fail: a projector that ignored the BN running stats would be far off
    p = "VPT_image_trans.conv1.1."
    no_stats = dict(ref_sd, **{p + "running_mean": torch.zeros(48), p + "running_var": torch.ones(48)})
    assert (F.normalize(reference_projector(feat, no_stats), dim=-1) - ref).abs().max().item() > 1e-3


def test_student_prompts_are_used_where_the_authors_put_them(tmp_path, images):
    sd = student_state_dict(depth=3)
    torch.save(dassl_checkpoint(sd), tmp_path / "s.pth.tar")
    official = load_official_student(tmp_path / "s.pth.tar", head_width=HEAD_WIDTH)
    with torch.no_grad():
        ours = official.encode_image(images)
        ref = F.normalize(
            reference_projector(reference_image(images, sd, "image_encoder.", 3, 2, depth=3), sd), dim=-1
        )
        wrong_depth = F.normalize(
            reference_projector(reference_image(images, sd, "image_encoder.", 3, 2, depth=2), sd), dim=-1
        )
    assert official.arch.depth == 3
    assert (ours - ref).abs().max().item() <= TOL
    assert (ours - wrong_depth).abs().max().item() > 1e-3


# ----------------------------------------------------------------------------- teacher
@pytest.mark.parametrize("layout,clip_file", [("dassl", "torchscript"), ("module_prefix", "state_dict")])
def test_official_teacher_matches_reference(tmp_path, images, base_files, layout, clip_file):
    base, scripted, plain = base_files
    sd = teacher_state_dict(base)
    torch.save(
        dassl_checkpoint(sd, "module." if layout == "module_prefix" else ""), tmp_path / "model.pth.tar-20"
    )
    official = load_official_teacher(
        tmp_path / "model.pth.tar-20",
        scripted if clip_file == "torchscript" else plain,
        CLASSNAMES,
        head_width=HEAD_WIDTH,
    )
    with torch.no_grad():
        ours_img, ours_txt = official.encode_image(images), official.class_vectors()
        ref_img = F.normalize(
            reference_image(images, sd, "image_encoder.", layers=3, heads=4, depth=3), dim=-1
        )
        ref_txt = F.normalize(
            reference_text(CLASSNAMES, sd, base["token_embedding.weight"], 2, 4, depth=2), dim=-1
        )
    assert not official.training and ours_txt.shape == (3, 48)
    assert (ours_img - ref_img).abs().max().item() <= TOL
    assert (ours_txt - ref_txt).abs().max().item() <= TOL
    assert official.logit_scale == pytest.approx(math.exp(4.4), rel=1e-6)
    # sensitivity: ignoring the deep text prompt changes the class vectors well past TOL
    no_deep = F.normalize(
        reference_text(CLASSNAMES, sd, base["token_embedding.weight"], 2, 4, depth=1), dim=-1
    )
    assert (ours_txt - no_deep).abs().max().item() > 1e-3


def test_checkpoint_kinds_are_recognised(base_files):
    base = base_files[0]
    assert checkpoint_kind(student_state_dict()) == "student"
    assert checkpoint_kind(teacher_state_dict(base)) == "teacher"
    assert checkpoint_kind(base) == "clip"


# ----------------------------------------------------------------------------- one-sentence errors
def test_student_checkpoint_passed_as_teacher_is_one_sentence(tmp_path, base_files):
    torch.save(dassl_checkpoint(student_state_dict()), tmp_path / "student.pth.tar")
    with pytest.raises(OfficialCheckpointError) as err:
        load_official_teacher(tmp_path / "student.pth.tar", base_files[1], CLASSNAMES, head_width=HEAD_WIDTH)
    assert "student checkpoint" in str(err.value) and "not an official PromptSRC teacher" in str(err.value)
    assert_one_sentence(str(err.value))


def test_teacher_checkpoint_passed_as_student_is_one_sentence(tmp_path, base_files):
    torch.save(dassl_checkpoint(teacher_state_dict(base_files[0])), tmp_path / "teacher.pth.tar")
    with pytest.raises(OfficialCheckpointError) as err:
        load_official_student(tmp_path / "teacher.pth.tar", head_width=HEAD_WIDTH)
    assert "teacher checkpoint" in str(err.value) and "not an official PromptKD student" in str(err.value)
    assert_one_sentence(str(err.value))


def test_base_clip_of_another_width_is_one_sentence(tmp_path, base_files):
    torch.save(dassl_checkpoint(teacher_state_dict(base_files[0])), tmp_path / "teacher.pth.tar")
    narrow = {k: v for k, v in base_clip_state_dict(text_width=32).items() if not k.startswith("visual.")}
    torch.save(narrow, tmp_path / "ViT-other.pt")
    with pytest.raises(OfficialCheckpointError) as err:
        load_official_teacher(
            tmp_path / "teacher.pth.tar", tmp_path / "ViT-other.pt", CLASSNAMES, head_width=HEAD_WIDTH
        )
    assert "text width 32" in str(err.value) and "text width 64" in str(err.value)
    assert_one_sentence(str(err.value))


@pytest.mark.parametrize("which", ["student", "teacher", "base_clip"])
def test_truncated_file_is_one_sentence(tmp_path, base_files, which):
    base, scripted, _ = base_files
    good = tmp_path / "good.pth.tar"
    if which == "student":
        torch.save(dassl_checkpoint(student_state_dict()), good)
    else:
        torch.save(dassl_checkpoint(teacher_state_dict(base)), good)
    source = scripted if which == "base_clip" else good
    cut = tmp_path / "cut.bin"
    cut.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    with pytest.raises(OfficialCheckpointError) as err:
        if which == "student":
            load_official_student(cut, head_width=HEAD_WIDTH)
        elif which == "teacher":
            load_official_teacher(cut, scripted, CLASSNAMES, head_width=HEAD_WIDTH)
        else:
            load_official_teacher(good, cut, CLASSNAMES, head_width=HEAD_WIDTH)
    assert "truncated or corrupt" in str(err.value)
    assert_one_sentence(str(err.value))


# ----------------------------------------------------------------------------- `promptkd-ray import`
def student_base_clip_state_dict(student_sd):
    """The student's base CLIP: its image tower is the checkpoint's; text tower of tiny-vit-student."""
    sd = {
        "visual." + k[len("image_encoder.") :]: v.clone()
        for k, v in student_sd.items()
        if k.startswith("image_encoder.") and "VPT" not in k
    }
    text = {k: v for k, v in base_clip_state_dict(text_width=32).items() if not k.startswith("visual.")}
    text["text_projection"] = torch.randn(32, 32) * 0.1
    return {**sd, **text}


def test_import_teacher_writes_artifacts_that_reproduce_the_official_teacher(tmp_path, base_files, images):
    from promptkd_ray.cli import main
    from promptkd_ray.core.artifacts import load_teacher
    from promptkd_ray.core.classvectors import load_class_vectors

    base, scripted, _ = base_files
    torch.save(dassl_checkpoint(teacher_state_dict(base)), tmp_path / "model-best.pth.tar")
    (tmp_path / "classnames.txt").write_text("\n".join(CLASSNAMES) + "\n")
    rc = main(
        [
            "import",
            "teacher",
            str(tmp_path / "model-best.pth.tar"),
            "--clip-weights",
            str(scripted),
            "--classnames-file",
            str(tmp_path / "classnames.txt"),
            "--out",
            str(tmp_path / "out"),
            "--head-width",
            "32",
        ]
    )
    assert rc == 0
    official = load_official_teacher(tmp_path / "model-best.pth.tar", scripted, CLASSNAMES, head_width=32)
    teacher, info = load_teacher(tmp_path / "out" / "teacher")
    cv = load_class_vectors(tmp_path / "out" / "class_vectors", expected_classnames=CLASSNAMES)
    assert info.spec.startswith("tiny-vit-teacher:") and (info.vision_depth, info.text_depth, info.n_ctx) == (
        3,
        2,
        4,
    )
    with torch.no_grad():
        assert (cv.vectors - official.class_vectors()).abs().max().item() <= TOL
        assert (teacher.encode_image(images) - official.encode_image(images)).abs().max().item() <= TOL
    assert cv.logit_scale == pytest.approx(official.logit_scale) and cv.templates == ("prompted",)


def test_import_student_writes_an_artifact_that_reproduces_the_official_student(tmp_path, images):
    from promptkd_ray.cli import main
    from promptkd_ray.core.artifacts import load_student

    sd = student_state_dict()
    torch.save(dassl_checkpoint(sd, "module."), tmp_path / "model-best.pth.tar")
    torch.save(student_base_clip_state_dict(sd), tmp_path / "ViT-student.pt")
    rc = main(
        [
            "import",
            "student",
            str(tmp_path / "model-best.pth.tar"),
            "--student-clip",
            str(tmp_path / "ViT-student.pt"),
            "--out",
            str(tmp_path / "student"),
            "--head-width",
            "16",
        ]
    )
    assert rc == 0
    official = load_official_student(tmp_path / "model-best.pth.tar", head_width=16)
    student, info = load_student(tmp_path / "student")
    assert info.spec.startswith("tiny-vit-student:") and (info.n_ctx, info.depth, info.teacher_dim) == (
        2,
        2,
        48,
    )
    with torch.no_grad():
        assert (student.eval().encode_image(images) - official.encode_image(images)).abs().max().item() <= TOL
    assert float(student.logit_scale) == pytest.approx(official.logit_scale)


def test_import_refuses_a_base_clip_that_is_not_the_checkpoints_backbone(tmp_path, capsys):
    from promptkd_ray.cli import main

    sd = student_state_dict()
    torch.save(dassl_checkpoint(sd), tmp_path / "model-best.pth.tar")
    other = student_base_clip_state_dict(sd)
    other["visual.ln_post.weight"] = other["visual.ln_post.weight"] + 0.5
    torch.save(other, tmp_path / "ViT-other.pt")
    rc = main(
        [
            "import",
            "student",
            str(tmp_path / "model-best.pth.tar"),
            "--student-clip",
            str(tmp_path / "ViT-other.pt"),
            "--out",
            str(tmp_path / "student"),
            "--head-width",
            "16",
        ]
    )
    message = capsys.readouterr().err.strip()
    assert rc == 2 and "differs from base CLIP" in message and "visual.ln_post.weight" in message
    assert_one_sentence(message)
    assert not (tmp_path / "student.json").exists()


@pytest.mark.parametrize("which", ["torchscript", "state_dict"])
def test_base_clip_passed_as_a_checkpoint_is_one_sentence(base_files, which):
    _, scripted, plain = base_files
    with pytest.raises(OfficialCheckpointError) as err:
        load_official_student(scripted if which == "torchscript" else plain)
    assert "base CLIP" in str(err.value)
    assert_one_sentence(str(err.value))
