"""`device` auto | cpu | cuda: resolved against what torch sees, refused (exit 2, naming the flag)
when it names no device or a GPU this machine lacks, and recorded where an attack ran.  The
suite runs on the CPU: torch's answer to "is there a GPU?" is replaced where a test needs one."""

from __future__ import annotations

import json

import pytest
import torch

from securefl.cli.app import main
from securefl.devices import resolve_device
from securefl.errors import ConfigError


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def test_auto_is_the_cpu_without_a_gpu_and_cuda_is_refused_there(no_gpu):
    assert resolve_device("auto") == resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="`threads_device` cuda, but torch sees no CUDA GPU"):
        resolve_device("cuda", path="threads_device")


def test_auto_is_the_gpu_torch_sees(a_gpu):
    assert resolve_device("auto") == resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name", ["gpu", "CUDA", "cuda:0", ""])
def test_other_names_are_refused(name):
    with pytest.raises(ConfigError, match=f"unknown device {name!r}: set `device` to one of auto, cpu, cuda"):
        resolve_device(name)


def test_train_on_cuda_without_a_gpu_exits_2_naming_the_flag(no_gpu, tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(["train", "--dataset", "digits", "--model", "mlp", "--device", "cuda", "--out", str(out)]) == 2
    )
    error = capsys.readouterr().err
    assert "--device cuda, but torch sees no CUDA GPU" in error and "use --device cpu or auto" in error
    assert not out.exists()


def test_several_workers_on_a_gpu_exit_2(a_gpu, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--dataset", "digits", "--model", "mlp", "--workers", "2", "--out", str(out)]
    assert main(argv) == 2
    assert "use --workers 1 to train on the GPU, or --device cpu" in capsys.readouterr().err
    assert not out.exists()


def test_attack_device_is_checked_recorded_and_refused_for_a_malicious_server(no_gpu, tmp_path, capsys):
    small = ["attack", "--attack", "idlg", "--images", "1", "--restarts", "1", "--iterations", "3"]
    assert main([*small, "--device", "cuda", "--out", str(tmp_path / "cuda")]) == 2
    assert "--device cuda, but torch sees no CUDA GPU" in capsys.readouterr().err
    assert main(["attack", "--attack", "imprint", "--device", "cpu", "--out", str(tmp_path / "imprint")]) == 2
    assert "--device does not apply to --attack imprint" in capsys.readouterr().err
    out = tmp_path / "cpu"
    assert main([*small, "--device", "auto", "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["config"]["device"] == "cpu"
