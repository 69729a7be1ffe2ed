"""The method presets as jobs: ComKD's parts switch on and off, KDPL-CA distils over a vocabulary,
and `classvectors` takes a names file (no Ray)."""

import pytest

from promptkd_ray.cli import main
from promptkd_ray.config import distill_job_from_dict
from promptkd_ray.core.classvectors import load_class_vectors

TOY = {"kind": "distill", "name": "m", "data": {"source": "toyworld", "toyworld_profile": "quick"}}


def _job(*overrides):
    return distill_job_from_dict(TOY, overrides=list(overrides))


def test_the_comkd_preset_turns_on_kl_ifalign_and_edu_attention_and_each_switches_off():
    from promptkd_ray.distill_setup import edu_attention_width

    comkd = _job("loss.preset=comkd")
    assert (comkd.loss.kd, comkd.loss.temperature, comkd.loss.ifalign_weight, comkd.loss.edu_attention) == (
        "kl",
        1.0,
        1.0,
        True,
    )
    assert (comkd.student.depth, comkd.student.n_ctx, comkd.train.optimizer) == (9, 4, "sgd")  # the paper's
    assert (
        edu_attention_width(comkd, 48) == 48
        and edu_attention_width(_job("loss.preset=comkd", "student.edu_attention_width=16"), 48) == 16
    )
    no_edu = _job("loss.preset=comkd", "loss.edu_attention=false")
    assert no_edu.loss.ifalign_weight == 1.0 and edu_attention_width(no_edu, 48) == 0
    no_align = _job("loss.preset=comkd", "loss.ifalign_weight=0")
    assert no_align.loss.edu_attention and no_align.loss.ifalign_weight == 0.0
    assert edu_attention_width(_job("loss.preset=promptkd"), 48) == 0


def test_kdpl_ca_distils_against_the_vocabulary_not_the_domains_classes(toy_world, tmp_path):
    from promptkd_ray.distill_setup import prepare
    from promptkd_ray.orchestration.checkpoints import run_storage
    from promptkd_ray.toyworld import vocabulary

    job = _job(
        "loss.preset=kdpl_ca",
        "teacher.vocabulary=toyworld",
        "loss.class_agnostic_k=32",
        f"storage_path={tmp_path}",
    )
    setup = prepare(job, run_storage(job))
    domain = toy_world.domain()
    assert setup.class_vectors.classnames == tuple(vocabulary()) and len(vocabulary()) == 108
    assert set(domain.classnames) < set(setup.class_vectors.classnames)
    assert setup.source.classnames == tuple(domain.classnames)  # the images are the domain's
    stored = load_class_vectors(str(tmp_path / "m" / "class_vectors"))
    assert stored.sha256 == setup.class_vectors.sha256
    with pytest.raises(
        Exception, match="hold 108 classes, but the dataset has 30"
    ):  # re-run with the domain's classes
        prepare(_job(f"storage_path={tmp_path}"), run_storage(job))


def test_classvectors_from_a_names_file(tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("red star\n\nblue circle\ngreen moon\n")
    out = tmp_path / "vocab"
    assert (
        main(["classvectors", "--names", str(names), "--zeroshot", "tiny-vit-teacher", "--out", str(out)])
        == 0
    )
    cv = load_class_vectors(str(out))
    assert cv.classnames == ("red star", "blue circle", "green moon") and cv.dim == 48
    (tmp_path / "twice.txt").write_text("a\nb\na\n")
    assert (
        main(
            [
                "classvectors",
                "--names",
                str(tmp_path / "twice.txt"),
                "--zeroshot",
                "tiny-vit-teacher",
                "--out",
                str(out),
            ]
        )
        == 2
    )
