"""The one checkpoint loader of every app (seqmix.apps.module): a checkpoint is data, never code
(weights_only=True); another app's checkpoint is refused by name; a crafted, truncated, foreign or
directory path is one line; the shipped checkpoints name their app."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from seqmix.apps.module import APP_KEY, read_checkpoint
from seqmix.cli import main

REPO = Path(__file__).resolve().parents[2]
SHIPPED = {"forecasting": REPO / "checkpoints/forecasting/informer_etth1.ckpt",
           "text": REPO / "checkpoints/text/redaffectivelm_lora.ckpt",
           "vision": REPO / "checkpoints/vision/biformer_tiny_28.ckpt"}
VISION_MAMBAOUT = REPO / "checkpoints/vision/mambaout_femto_28.ckpt"
FIT_CONFIG = REPO / "configs/fraud/synthetic.yaml"


class CreatesAFile:
    """Unpickling it would create ``path`` (the harmless stand-in for a payload)."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def commands(ckpt: Path, tmp: Path) -> dict[str, list[str]]:
    """Every command that takes a checkpoint, with ``ckpt`` as that checkpoint."""
    image = tmp / "image.png"
    return {
        "forecasting predict": ["forecasting", "predict", "--ckpt", str(ckpt), "--dataset", "vic_elec",
                                "--out", str(tmp / "f.csv")],
        "vision predict": ["vision", "predict", "--ckpt", str(ckpt), str(image)],
        "vision predict --explain": ["vision", "predict", "--ckpt", str(ckpt), str(image), "--explain",
                                     str(tmp / "routing.png")],
        "text predict": ["text", "predict", "--ckpt", str(ckpt), "--text", "a headline"],
        "fraud cluster": ["fraud", "cluster", "--fit_config", str(FIT_CONFIG), "--checkpoint", str(ckpt),
                          "--report", str(tmp / "report.md")],
        "forecasting test --ckpt_path": ["forecasting", "test", "--ckpt_path", str(ckpt)],
        "vision validate --ckpt_path": ["vision", "validate", f"--ckpt_path={ckpt}"],
        "recall fit --ckpt_path": ["recall", "fit", "--ckpt_path", str(ckpt)],
    }


def one_line(argv: list[str], monkeypatch) -> str:
    """The command's error line (it must end the command with a message, not a traceback)."""
    monkeypatch.delenv("SEQMIX_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as done:
        main(argv)
    message = str(done.value.code)
    assert message.count("\n") == 1 and message.endswith("(SEQMIX_TRACEBACK=1 shows the traceback)"), message
    return message.splitlines()[0]


@pytest.fixture
def image(tmp_path):
    from PIL import Image

    Image.new("L", (28, 28)).save(tmp_path / "image.png")


def test_a_crafted_checkpoint_is_refused_unread_by_every_command_that_takes_one(tmp_path, image, monkeypatch):
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": CreatesAFile(marker), APP_KEY: "vision"}, evil)
    for name, argv in commands(evil, tmp_path).items():
        message = one_line(argv, monkeypatch)
        assert "holds pickled Python objects (io.open)" in message and "never as code" in message, name
        assert "weights_only=False" not in message, name
        assert not marker.exists(), f"{name} ran the checkpoint's code"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.ckpt", "image.png"]  # nothing written


def test_another_apps_checkpoint_is_refused_by_name(tmp_path, image, monkeypatch):
    for name, argv in commands(SHIPPED["text"], tmp_path).items():
        app = argv[0]
        if app != "text":
            assert f"this is a checkpoint of `seqmix text fit`, not {app}" in one_line(argv, monkeypatch), name
    message = one_line(commands(SHIPPED["vision"], tmp_path)["text predict"], monkeypatch)
    assert "this is a checkpoint of `seqmix vision fit`, not text" in message


@pytest.mark.parametrize("kind", ["truncated", "foreign", "empty", "directory", "missing"])
def test_a_truncated_foreign_directory_or_missing_path_is_one_line(tmp_path, monkeypatch, kind):
    path = tmp_path / "x.ckpt"
    if kind == "truncated":
        path.write_bytes(SHIPPED["forecasting"].read_bytes()[:5000])
    elif kind == "foreign":
        path.write_text("date,OT\n2020-01-01,1.0\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "directory":
        path.mkdir()
    expected = {"directory": "is a directory, not a file", "missing": "does not exist"}.get(
        kind, "is not a torch checkpoint file (truncated, or another kind of file)")
    every = commands(path, tmp_path)
    for argv in (every["forecasting predict"], every["vision validate --ckpt_path"]):
        message = one_line(argv, monkeypatch)
        assert f"checkpoint {path} {expected}" in message or f"checkpoint {path}: {expected}" in message, message
        assert "PytorchStreamReader" not in message and "Error" not in message


def test_a_checkpoint_that_names_no_app_or_a_class_outside_seqmix_is_refused(tmp_path):
    plain = torch.load(SHIPPED["forecasting"], weights_only=True)
    del plain[APP_KEY]
    torch.save(plain, tmp_path / "old.ckpt")
    with pytest.raises(ValueError, match=r"names no seqmix app .*scripts/tag_checkpoint.py --app forecasting"):
        read_checkpoint(tmp_path / "old.ckpt", "forecasting", "fix")
    network = plain["hyper_parameters"]["network"]
    plain[APP_KEY] = "forecasting"
    plain["hyper_parameters"]["network"] = {"class_path": "subprocess.Popen", "init_args": {"args": ["true"]}}
    torch.save(plain, tmp_path / "foreign_class.ckpt")
    with pytest.raises(ValueError, match=r"name classes outside seqmix \(\['subprocess.Popen'\]\): refused"):
        read_checkpoint(tmp_path / "foreign_class.ckpt", "forecasting", "fix")
    assert network["class_path"].startswith("seqmix.")


@pytest.mark.parametrize("app", sorted(SHIPPED))
def test_shipped_checkpoints_are_plain_data_and_name_their_app(app):
    for path in [SHIPPED[app]] + ([VISION_MAMBAOUT] if app == "vision" else []):
        assert torch.load(path, weights_only=True)[APP_KEY] == app
        read_checkpoint(path, app, "")


def test_the_tag_script_names_the_app_with_bit_identical_weights_and_refuses_another(tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from tag_checkpoint import same, tag
    finally:
        sys.path.remove(str(REPO / "scripts"))
    plain = torch.load(SHIPPED["forecasting"], weights_only=True)
    del plain[APP_KEY]
    path = tmp_path / "old.ckpt"
    torch.save(plain, path)
    assert tag(path, "forecasting").endswith("now names forecasting (weights bit-identical)")
    tagged = torch.load(path, weights_only=True)
    assert tagged.pop(APP_KEY) == "forecasting" and same(tagged, plain)
    assert not same(torch.tensor([0.0]), torch.tensor([-0.0]))  # bits, not values
    with pytest.raises(ValueError, match="names the app 'forecasting', not 'vision'; left as it is"):
        tag(path, "vision")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.ckpt"]
