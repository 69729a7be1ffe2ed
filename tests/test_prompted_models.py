"""Prompted towers, student and teacher against open_clip and an independent reference."""

import pytest
import torch
from reference_clip import reference_image_features, reference_text_features

from promptkd_ray.core.models import PromptedVisionTransformer, build_student, build_teacher, load_clip
from promptkd_ray.core.models.student import ConvMLPProjector

torch.manual_seed(0)


def _randomize_layernorms(model):
    """open_clip initialises LayerNorms to identity; perturb them so placement errors show."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name:
                p.add_(0.1 * torch.randn_like(p))


@pytest.fixture(scope="module")
def student_clip():
    clip = load_clip("tiny-vit-student")
    _randomize_layernorms(clip)
    return clip


def test_depth_zero_equals_open_clip_vision_transformer_bit_for_bit(student_clip):
    images = torch.randn(3, 3, 32, 32)
    prompted = PromptedVisionTransformer(student_clip.visual, n_ctx=4, depth=0)
    with torch.no_grad():
        assert torch.equal(prompted(images), student_clip.visual(images))


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_prompted_tower_matches_independent_reference(student_clip, depth):
    images = torch.randn(2, 3, 32, 32)
    prompted = PromptedVisionTransformer(student_clip.visual, n_ctx=3, depth=depth)
    sd = {k: v.detach() for k, v in student_clip.state_dict().items()}
    prompts = [prompted.shallow_prompt.detach()] + [p.detach() for p in prompted.deep_prompts]
    with torch.no_grad():
        ours = prompted(images)
        ref = reference_image_features(images, sd, heads=2, prompts=prompts)
        plain = student_clip.visual(images)
    assert torch.allclose(ours, ref, atol=1e-5), (ours - ref).abs().max()
    assert not torch.allclose(ours, plain, atol=1e-3)  # prompts do change the output


def test_prompt_depth_beyond_tower_is_refused(student_clip):
    with pytest.raises(ValueError, match="prompt depth must be in 0…3"):
        PromptedVisionTransformer(student_clip.visual, n_ctx=4, depth=4)


def test_only_prompts_and_projector_train_and_backbone_stays_bit_identical():
    from promptkd_ray.core.loss_config import LossConfig
    from promptkd_ray.core.step import distill_step

    torch.manual_seed(1)
    student = build_student("tiny-vit-student", teacher_dim=48, n_ctx=4, depth=3)
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    assert trainable and all(
        n.startswith(("image_encoder.shallow_prompt", "image_encoder.deep_prompts", "projector."))
        for n in trainable
    )
    assert not student.logit_scale.requires_grad
    backbone = {
        k: v.clone() for k, v in student.state_dict().items() if k.startswith("image_encoder.visual.")
    }
    prompts_before = [p.detach().clone() for p in student.image_encoder.prompt_parameters()]
    projector_before = [p.detach().clone() for p in student.projector.parameters()]

    images = torch.randn(8, 3, 32, 32)
    class_vectors = torch.nn.functional.normalize(torch.randn(6, 48), dim=-1)
    teacher_features = torch.nn.functional.normalize(torch.randn(8, 48), dim=-1)
    optimizer = torch.optim.SGD(student.trainable_parameters(), lr=0.002, momentum=0.9)
    losses = [
        distill_step(student, images, teacher_features, class_vectors, optimizer, LossConfig(), 50.0)["loss"]
        for _ in range(15)
    ]

    for k, v in student.state_dict().items():
        if k in backbone:
            assert torch.equal(v, backbone[k]), k
    assert all(
        not torch.equal(a, b) for a, b in zip(prompts_before, student.image_encoder.prompt_parameters())
    )
    assert all(not torch.equal(a, b) for a, b in zip(projector_before, student.projector.parameters()))
    assert losses[-1] < 0.5 * losses[0], losses


def test_mlp2_projector_is_the_authors_conv_bn_relu_conv_with_bn_running_stats():
    proj = ConvMLPProjector(8, 12)
    keys = set(proj.state_dict())
    assert {
        "conv1.0.weight",
        "conv1.0.bias",
        "conv1.1.running_mean",
        "conv1.1.running_var",
        "conv1.3.weight",
        "conv1.3.bias",
    } <= keys
    x = torch.randn(5, 8)
    proj.train()
    proj(x)
    assert not torch.allclose(proj.conv1[1].running_mean, torch.zeros(12))
    proj.eval()
    c0, bn, c3 = proj.conv1[0], proj.conv1[1], proj.conv1[3]
    h = x @ c0.weight[:, :, 0, 0].t() + c0.bias
    h = (h - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    ref = h.relu() @ c3.weight[:, :, 0, 0].t() + c3.bias
    assert torch.allclose(proj(x), ref, atol=1e-5)


@pytest.mark.parametrize("kind,expected", [("linear", torch.nn.Linear), ("identity", torch.nn.Identity)])
def test_other_projector_kinds(kind, expected):
    student = build_student("tiny-vit-student", teacher_dim=32, depth=1, projector=kind)
    assert isinstance(student.projector, expected)
    assert student.encode_image(torch.randn(2, 3, 32, 32)).norm(dim=-1).allclose(torch.ones(2))


def test_identity_projector_with_different_dims_is_refused():
    with pytest.raises(ValueError, match="equal student and teacher dims"):
        build_student("tiny-vit-student", teacher_dim=48, depth=1, projector="identity")


def test_prompted_teacher_text_matches_reference_with_context_after_sos():
    teacher = build_teacher("tiny-vit-teacher", vision_depth=2, text_depth=2, n_ctx=4)
    enc = teacher.text_encoder
    _randomize_layernorms(enc)
    names = ["red_circle", "blue square"]
    tokens = enc.tokenizer([f"a photo of a {n.replace('_', ' ')}." for n in names])
    sd = {k: v.detach() for k, v in enc.state_dict().items()}
    with torch.no_grad():
        ours = enc.encode_prompted(names)
        ref = reference_text_features(
            tokens, sd, heads=2, ctx=enc.ctx.detach(), deep=[p.detach() for p in enc.deep_prompts]
        )
    assert torch.allclose(ours, ref, atol=1e-5), (ours - ref).abs().max()
    # ctx starts as the token embeddings of "a photo of a": initially prompted = plain prompt text
    plain_sd = dict(sd)
    with torch.no_grad():
        no_deep = reference_text_features(tokens, plain_sd, heads=2)
        ctx_only = reference_text_features(tokens, plain_sd, heads=2, ctx=enc.ctx.detach())
    assert torch.allclose(no_deep, ctx_only, atol=1e-6)


def test_zero_shot_teacher_template_ensemble_is_mean_of_normalised_then_normalised():
    teacher = build_teacher("tiny-vit-teacher")
    names = ["dog", "cat_fish"]
    templates = ["a photo of a {}.", "a drawing of the {}."]
    with torch.no_grad():
        ours = teacher.encode_text(names, templates=templates)
        per = []
        for t in templates:
            toks = teacher.text_encoder.tokenizer([t.format(n.replace("_", " ")) for n in names])
            per.append(torch.nn.functional.normalize(teacher.text_encoder.encode_tokens(toks), dim=-1))
        ref = torch.nn.functional.normalize(torch.stack(per).mean(0), dim=-1)
    assert torch.allclose(ours, ref, atol=1e-6)
    assert teacher.encode_text(names, templates="imagenet60").shape == (2, 48)


def test_zero_shot_text_equals_open_clip_encode_text():
    teacher = build_teacher("tiny-vit-teacher")
    tokens = teacher.text_encoder.tokenizer(["a photo of a dog.", "a photo of a cat."])
    # the Teacher wraps (shares) the CLIP's modules; rebuild the same CLIP around them
    import open_clip

    clip = open_clip.create_model("tiny-vit-teacher")
    state = {}
    for name, module in [
        ("token_embedding", teacher.text_encoder.token_embedding),
        ("transformer", teacher.text_encoder.transformer),
        ("ln_final", teacher.text_encoder.ln_final),
    ]:
        state.update({f"{name}.{k}": v for k, v in module.state_dict().items()})
    state["positional_embedding"] = teacher.text_encoder.positional_embedding
    state["text_projection"] = teacher.text_encoder.text_projection
    clip.load_state_dict(state, strict=False)
    with torch.no_grad():
        ours, theirs = teacher.text_encoder.encode_tokens(tokens), clip.encode_text(tokens)
    assert torch.allclose(ours, theirs, atol=1e-6), (ours - theirs).abs().max()
