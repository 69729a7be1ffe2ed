"""Checkpoints from strangers: a `.pth.tar` / `.pt` whose loading would run code (create a marker
file) is refused with one sentence, or only its tensors are loaded, by every command that accepts
such a file — `import student|teacher` (checkpoint and base CLIP), `MODEL:PATH` specs
(`classvectors --zeroshot`, `ModelRef`), and the teacher job. The marker never exists afterwards.

Each payload is first shown to be live: loading it the unsafe way (`pickle` / `torch.load(
weights_only=False)` / `torch.jit.load`, in a subprocess) does create its marker.
"""

import os
import pickle
import subprocess
import sys
import warnings

import pytest
import torch
import yaml
from test_interop import dassl_checkpoint, save_torchscript, student_base_clip_state_dict, student_state_dict

PAYLOADS = ("open_zip", "system_legacy", "plain_pickle", "open_outside_state_dict", "torchscript_setstate")


class _OpenFile:
    """Unpickling this calls open(marker, "w"): it creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import builtins

        return builtins.open, (self.marker, "w")


class _System:
    """Unpickling this runs `touch marker` through os.system."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _CreatesFileOnLoad(torch.nn.Module):
    """Scripted, its `__setstate__` (which torch.jit.load runs) creates the marker via torch.from_file."""

    def __init__(self, marker: str):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(2))
        self.marker = marker

    @torch.jit.export
    def __getstate__(self):
        return (self.w, self.training, self.marker)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, bool, str]):
        created = torch.from_file(state[2], True, 8, dtype=torch.uint8)
        self.w = state[0] + created.sum()
        self.training = state[1]
        self.marker = state[2]

    def forward(self, x):
        return x


def write_payload(kind: str, path, marker, state_dict=None) -> None:
    """A checkpoint at `path` whose unsafe loading creates `marker` (`state_dict`: real tensors beside it)."""
    tensors = dict(state_dict or {"w": torch.zeros(2)})
    if kind == "open_zip":
        torch.save({"state_dict": {**tensors, "evil": _OpenFile(marker)}}, path)
    elif kind == "system_legacy":
        torch.save(
            {"state_dict": tensors, "evil": _System(marker)}, path, _use_new_zipfile_serialization=False
        )
    elif kind == "plain_pickle":
        with open(path, "wb") as f:
            pickle.dump({"state_dict": {"w": [0.0]}, "evil": _OpenFile(marker)}, f)
    elif kind == "open_outside_state_dict":  # the tensors are fine; the payload sits where a scheduler would
        torch.save({"state_dict": tensors, "scheduler": _OpenFile(marker)}, path)
    elif kind == "torchscript_setstate":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated
            torch.jit.script(_CreatesFileOnLoad(str(marker))).save(str(path))
    else:
        raise ValueError(kind)


def unsafe_load(kind: str, path) -> None:
    """Load `path` the way a careless reader would, in a subprocess."""
    code = (
        "import torch,sys; torch.jit.load(sys.argv[1])"
        if kind == "torchscript_setstate"
        else "import torch,sys; torch.load(sys.argv[1], weights_only=False)"
    )
    subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code, str(path)],
        cwd=os.path.dirname(__file__),
        capture_output=True,
    )


@pytest.mark.parametrize("kind", PAYLOADS)
def test_each_payload_is_live_when_loaded_unsafely(kind, tmp_path):
    marker = tmp_path / "MARKER"
    write_payload(kind, tmp_path / "evil.pt", marker)
    assert not marker.exists()
    unsafe_load(kind, tmp_path / "evil.pt")
    assert marker.exists(), f"the {kind} payload did not run, so the tests below would prove nothing"


def assert_one_sentence(message: str) -> None:
    assert message.startswith("error: ") and "\n" not in message and "Traceback" not in message, message
    assert message.endswith((".", ")")), message


@pytest.fixture()
def marker(tmp_path):
    path = tmp_path / "MARKER"
    yield path
    assert not path.exists(), "a checkpoint's code ran"


@pytest.mark.parametrize("kind", PAYLOADS)
def test_import_student_with_a_malicious_checkpoint(kind, tmp_path, marker, capsys):
    from promptkd_ray.cli import main

    sd = student_state_dict()
    torch.save(student_base_clip_state_dict(sd), tmp_path / "ViT-student.pt")
    write_payload(kind, tmp_path / "model-best.pth.tar", marker, sd)
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
    err = capsys.readouterr().err.strip()
    if kind == "open_outside_state_dict":  # loads only the tensors: the import works
        assert rc == 0 and err == "" and (tmp_path / "student.safetensors").is_file()
    else:
        assert rc == 2 and "model-best.pth.tar" in err
        assert_one_sentence(err)
        assert not (tmp_path / "student.json").exists()


@pytest.mark.parametrize("kind", PAYLOADS)
def test_import_student_with_a_malicious_base_clip(kind, tmp_path, marker, capsys):
    from promptkd_ray.cli import main

    sd = student_state_dict()
    torch.save(dassl_checkpoint(sd), tmp_path / "model-best.pth.tar")
    write_payload(kind, tmp_path / "ViT-student.pt", marker, student_base_clip_state_dict(sd))
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
    err = capsys.readouterr().err.strip()
    assert (
        rc == 2 and "ViT-student.pt" in err
    )  # a weights file must be tensors only: even a stray object is refused
    assert_one_sentence(err)


@pytest.mark.parametrize("kind", PAYLOADS)
def test_import_teacher_with_a_malicious_checkpoint_or_base_clip(kind, tmp_path, marker, capsys):
    from test_interop import CLASSNAMES, base_clip_state_dict, teacher_state_dict

    from promptkd_ray.cli import main

    base = base_clip_state_dict()
    save_torchscript(base, tmp_path / "ViT-tiny.pt")
    torch.save(dassl_checkpoint(teacher_state_dict(base)), tmp_path / "good.pth.tar")
    write_payload(kind, tmp_path / "evil.pth.tar", marker, teacher_state_dict(base))
    write_payload(kind, tmp_path / "ViT-evil.pt", tmp_path / "MARKER", base)
    (tmp_path / "classnames.txt").write_text("\n".join(CLASSNAMES) + "\n")
    for checkpoint, clip in (("evil.pth.tar", "ViT-tiny.pt"), ("good.pth.tar", "ViT-evil.pt")):
        out = tmp_path / f"out_{checkpoint}"
        rc = main(
            [
                "import",
                "teacher",
                str(tmp_path / checkpoint),
                "--clip-weights",
                str(tmp_path / clip),
                "--classnames-file",
                str(tmp_path / "classnames.txt"),
                "--out",
                str(out),
                "--head-width",
                "32",
            ]
        )
        err = capsys.readouterr().err.strip()
        if (
            kind == "open_outside_state_dict" and checkpoint == "evil.pth.tar"
        ):  # its tensors load, nothing else
            assert rc == 0 and err == "" and (out / "teacher.safetensors").is_file()
        else:
            assert rc == 2 and ("evil" in err.lower()), err
            assert_one_sentence(err)
        assert not (tmp_path / "MARKER").exists()


@pytest.mark.parametrize("kind", PAYLOADS)
def test_a_model_spec_naming_a_malicious_file(kind, tmp_path, marker, capsys):
    from promptkd_ray.cli import main
    from promptkd_ray.core.artifacts import ModelRef
    from promptkd_ray.core.models import load_clip
    from promptkd_ray.errors import ModelSpecError

    write_payload(kind, tmp_path / "evil.pt", marker, load_clip("tiny-vit-teacher").state_dict())
    (tmp_path / "names.txt").write_text("cat\ndog\n")
    spec = f"tiny-vit-teacher:{tmp_path / 'evil.pt'}"
    rc = main(
        [
            "classvectors",
            "--names",
            str(tmp_path / "names.txt"),
            "--zeroshot",
            spec,
            "--out",
            str(tmp_path / "cv"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "evil.pt" in err
    assert_one_sentence(err)
    with pytest.raises(ModelSpecError, match="evil.pt"):
        ModelRef("zeroshot", spec).build()


@pytest.mark.parametrize("kind", PAYLOADS)
def test_the_teacher_job_refuses_a_malicious_base_model(kind, tmp_path, marker, capsys):
    from fakes import make_fake_dataset

    from promptkd_ray.cli import main
    from promptkd_ray.core.models import load_clip

    make_fake_dataset("OxfordPets", tmp_path / "data", classes=4, per_class=4)
    write_payload(kind, tmp_path / "evil.pt", marker, load_clip("tiny-vit-teacher").state_dict())
    job = {
        "kind": "teacher",
        "name": "evil",
        "storage_path": str(tmp_path / "runs"),
        "teacher": {"spec": f"tiny-vit-teacher:{tmp_path / 'evil.pt'}", "mode": "zeroshot"},
        "data": {"source": "benchmark", "root": str(tmp_path / "data"), "dataset": "OxfordPets", "shots": 2},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["teacher", "--config", str(tmp_path / "job.yaml")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "evil.pt" in err
    assert_one_sentence(err)


@pytest.mark.parametrize("kind", ["open_zip", "system_legacy", "torchscript_setstate"])
def test_a_run_checkpoint_with_a_malicious_optimiser_state_is_refused(kind, tmp_path, marker):
    """A run folder from elsewhere: its train_state.pt (sealed into the manifest) would run code."""
    from promptkd_ray.errors import CheckpointCorruptError
    from promptkd_ray.orchestration.checkpoints import (
        load_checkpoint,
        new_progress,
        save_checkpoint,
        seal_checkpoint,
    )

    folder = tmp_path / "checkpoint_epoch_000"
    folder.mkdir()
    save_checkpoint(
        folder, {"w": torch.zeros(2)}, {"step": torch.tensor(0)}, dict(new_progress({"job": "x"}), epoch=0)
    )
    write_payload(kind, folder / "train_state.pt", marker)
    seal_checkpoint(folder)
    with pytest.raises(
        CheckpointCorruptError,
        match=r"^The checkpoint .* is corrupt: its (files do not load|"
        r"train_state\.pt is TorchScript)",
    ):
        load_checkpoint(folder, {"job": "x"})
