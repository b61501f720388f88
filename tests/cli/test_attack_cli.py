"""`securefl attack` and `securefl attack compare` end to end, and every bad input -> exit 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from securefl.cli.app import main

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_attack_writes_picture_metrics_and_arrays(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["attack", "--attack", "idlg", "--images", "2", "--restarts", "2", "--out", str(out)])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["arrays.npz", "metrics.json", "reconstruction.png"]
    assert (out / "reconstruction.png").read_bytes()[:8] == PNG
    arrays = np.load(out / "arrays.npz")
    assert arrays["original"].shape == arrays["reconstructed"].shape == (2, 1, 28, 28)
    assert arrays["reconstructed"].dtype == np.float32
    assert arrays["reconstructed"].min() >= 0 and arrays["reconstructed"].max() <= 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["images"]) == 2
    pairs = zip(arrays["original"], arrays["reconstructed"], strict=True)
    for image, (original, reconstructed) in zip(metrics["images"], pairs, strict=True):
        expected = 10 * np.log10(1 / np.mean((original.astype(np.float64) - reconstructed) ** 2))
        assert image["psnr"] == pytest.approx(expected, rel=1e-4)
        assert image["psnr"] >= 40 and image["label_correct"]
        assert image["baseline_psnr"] < 20
    assert metrics["summary"]["label_accuracy"] == 1.0
    assert metrics["baseline"]["median_psnr"] < 20
    assert metrics["wall_seconds"] > 0
    assert str(out) in capsys.readouterr().out


def test_inverting_gradients_under_secure_aggregation_through_the_cli(tmp_path):
    out = tmp_path / "secagg"
    argv = ["attack", "--attack", "ig", "--dataset", "images", "--model", "cnn", "--defence", "secagg"]
    argv += ["--clients", "2", "--images", "1", "--iterations", "5", "--restarts", "1", "--out", str(out)]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["defence"] == {"name": "secagg", "clients": 2}
    assert metrics["rounds"][0]["secagg_clipped_fraction"] == 0.0
    assert np.load(out / "arrays.npz")["reconstructed"].shape == (1, 3, 32, 32)


def test_compare_writes_one_row_per_defence(tmp_path, capsys):
    out = tmp_path / "compare"
    argv = ["attack", "compare", "--images", "1", "--restarts", "1", "--iterations", "2", "--out", str(out)]
    assert main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["compare.json", "compare.png"]
    assert (out / "compare.png").read_bytes()[:8] == PNG
    rows = json.loads((out / "compare.json").read_text())["rows"]
    labels = [row["defence"] for row in rows]
    assert labels[0] == "no defence" and labels[1].startswith("clip")
    assert labels[2:4] == ["prune 50%", "prune 90%"]
    assert labels[4:7] == ["DP-SGD z=0.01", "DP-SGD z=0.1", "DP-SGD z=1"]
    assert labels[7:] == [f"SecAgg N={n}" for n in (2, 4, 8, 16, 32)]
    epsilons = [row["epsilon"] for row in rows[4:7]]
    assert epsilons[0] > epsilons[1] > epsilons[2] > 0  # more noise buys a smaller ε
    assert all(row["epsilon"] is None for row in rows[:4] + rows[7:])
    assert rows[1]["round_facts"] == [{"clipped": True}]
    assert [row["round_facts"][0]["secagg_clipped_fraction"] for row in rows[7:]] == [0.0] * 5
    assert "SecAgg N=32" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--attack", "gan"], "unknown attack 'gan'"),
        (["--defence", "shield"], "unknown defence 'shield'"),
        (["--model", "vgg"], "unknown model 'vgg'"),
        (["--batch-size", "2000"], "exceed the 1000 test images"),
        (["--images", "0"], "--images 0 < 1"),
        (["--images", "3", "--batch-size", "2"], "not a multiple of --batch-size"),
        (["--noise-multiplier", "1.0"], "--noise-multiplier belongs to --defence dp"),
        (["--defence", "clip", "--clients", "4"], "--clients belongs to --defence secagg"),
        (["--prune-ratio", "0.5"], "--prune-ratio belongs to --defence prune"),
        (["--noise-std", "0.1", "--defence", "dp"], "--noise-std belongs to --defence noise"),
        (["--model", "cnn"], "twice-differentiable"),
        (["--attack", "idlg", "--model", "cnn"], "--attack ig"),
        (["--dataset", "boston"], "not an image classification set"),
        (["--dataset", "cifar10"], "cifar10"),
        (["--defence", "secagg", "--clients", "1"], "--clients 2 or more"),
        (
            ["--defence", "dp", "--max-grad-norm", "0"],
            "--max-grad-norm 0.0 <= 0: use a positive --max-grad-norm",
        ),
        (["--defence", "noise", "--noise-std", "-1"], "--noise-std -1.0 < 0"),
        (
            ["--defence", "distributed-dp", "--noise-multiplier", "0"],
            "--noise-multiplier 0.0 <= 0: use a positive --noise-multiplier",
        ),
        (["--attack", "nope"], "dlg, idlg, ig (gradient inversion) or imprint, inconsistency"),
        (["--defence", "prune", "--prune-ratio", "1"], "--prune-ratio 1.0 outside [0, 1)"),
        (["--lr", "0"], "--lr 0"),
        (["--server-init", "zeros"], "unknown server init"),
        (["--seed", "-1"], "--seed -1 outside 0..4294967295"),
        (["--seed", "4294967296"], "--seed 4294967296 outside 0..4294967295"),
        (["--threads", "99999999999999999999"], "use a --threads below 2147483648"),
        (["--attack", "imprint", "--seed", "-1"], "--seed -1 outside 0..4294967295"),
    ],
)
def test_bad_input_exits_2_with_a_message_and_writes_nothing(tmp_path, capsys, argv, message):
    out = tmp_path / "never"
    assert main(["attack", *argv, "--out", str(out)]) == 2
    error = " ".join(capsys.readouterr().err.split())
    assert message in error
    assert "Traceback" not in error
    assert not out.exists()


def test_compare_bad_input_and_existing_output_exit_2(tmp_path, capsys):
    assert main(["attack", "compare", "--attack", "dlg", "--model", "mlp", "--out", str(tmp_path / "x")]) == 2
    assert "twice-differentiable" in " ".join(capsys.readouterr().err.split())
    # compare has no --defence: its secure-aggregation rows need two clients, said as such
    assert (
        main(["attack", "compare", "--attack", "imprint", "--clients", "1", "--out", str(tmp_path / "y")])
        == 2
    )
    error = " ".join(capsys.readouterr().err.split())
    assert "secure aggregation needs --clients 2 or more" in error and "--defence" not in error
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    assert main(["attack", "--images", "1", "--out", str(busy)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_imprint_under_secagg_recovers_images_and_the_defaults_refuse_it(tmp_path):
    out = tmp_path / "imprint"
    flags = ["attack", "--attack", "imprint", "--defence", "secagg", "--clients", "4", "--batch-size", "4"]
    code = main([*flags, "--bins", "128", "--no-pinning", "--no-parameter-checks", "--out", str(out)])
    assert code == 0
    assert (out / "reconstruction.png").read_bytes()[:8] == PNG
    arrays = np.load(out / "arrays.npz")
    metrics = json.loads((out / "metrics.json").read_text())
    recomputed = [
        10 * np.log10(1 / np.mean((o.astype(np.float64) - r) ** 2))
        for o, r in zip(arrays["original"], arrays["reconstructed"], strict=True)
    ]
    # float32 arrays: exact recoveries (>100 dB) agree only to their rounding, so compare capped values
    capped = [min(p, 80.0) for p in metrics["trials"][0]["target_psnr"]]
    assert capped == pytest.approx([min(p, 80.0) for p in recomputed], rel=1e-4)
    assert sum(p >= 30 for p in recomputed) >= 3
    assert metrics["summary"]["recovered_share"] >= 0.5

    refused = tmp_path / "refused"
    assert main([*flags, "--out", str(refused)]) == 0  # pinning and checks are on by default
    summary = json.loads((refused / "metrics.json").read_text())["summary"]
    assert summary["target_refused_share"] == 1 and summary["recovered_share"] == 0


@pytest.mark.parametrize(
    "flags",
    [
        ["--attack", "imprint", "--defence", "dp"],
        ["--attack", "inconsistency", "--defence", "none"],
        ["--attack", "imprint", "--placement", "mlp", "--bins", "32"],
        ["--attack", "imprint", "--placement", "side"],
        ["--attack", "imprint", "--defence", "secagg", "--clients", "1"],
        ["--attack", "imprint", "--bins", "0"],
    ],
)
def test_bad_malicious_server_flags_exit_2(tmp_path, flags):
    assert main(["attack", *flags, "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def test_too_many_bins_exit_2_before_allocating(tmp_path, capsys):
    flags = ["--attack", "imprint", "--no-pinning", "--placement", "front", "--bins", "100000000"]
    assert main(["attack", *flags, "--out", str(tmp_path / "x")]) == 2
    assert "--bins 171196 or fewer" in capsys.readouterr().err  # 2**27 // 784
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "flags",
    [
        ["--attack", "imprint", "--model", "cnn"],
        ["--attack", "imprint", "--local-steps", "5"],
        ["--attack", "imprint", "--images", "3"],
        ["--attack", "inconsistency", "--noise-multiplier", "2"],
        ["--attack", "imprint", "--server-init", "uniform"],
        ["--attack", "idlg", "--placement", "mlp"],
        ["--attack", "idlg", "--no-pinning"],
        ["--attack", "dlg", "--bins", "64"],
        ["--attack", "ig", "--active-secagg"],
    ],
)
def test_flags_that_do_not_apply_to_the_attack_exit_2(tmp_path, capsys, flags):
    assert main(["attack", *flags, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert flags[2] in err and f"does not apply to --attack {flags[1]}" in err
    assert not (tmp_path / "x").exists()


def test_consistency_runs_secure_aggregation_in_active_mode_unless_told_otherwise(tmp_path):
    flags = ["attack", "--attack", "inconsistency", "--defence", "secagg", "--clients", "3"]
    flags += ["--batch-size", "4", "--placement", "mlp", "--no-pinning", "--no-parameter-checks"]
    labels = {}
    for extra in ([], ["--passive-secagg"], ["--no-consistency"]):
        out = tmp_path / "-".join(extra or ["default"])
        assert main([*flags, *extra, "--out", str(out)]) == 0
        labels[tuple(extra)] = json.loads((out / "metrics.json").read_text())["summary"]["label"]
    assert "active" in labels[()]
    assert "active" not in labels[("--passive-secagg",)]
    assert "active" not in labels[("--no-consistency",)]


def test_compare_gains_malicious_server_rows(tmp_path):
    out = tmp_path / "compare"
    flags = ["attack", "compare", "--attack", "inconsistency", "--batch-size", "4", "--clients", "4"]
    assert main([*flags, "--bins", "64", "--out", str(out)]) == 0
    assert (out / "compare.png").read_bytes()[:8] == PNG
    rows = json.loads((out / "compare.json").read_text())["rows"]
    labels = [row["summary"]["label"] for row in rows]
    assert labels[0].startswith("imprint") and "none" in labels[0]
    recovered = [row["summary"]["recovered_share"] for row in rows]
    # alone and under SecAgg without defences the target comes back; any defence stops it
    assert recovered[0] >= 0.5 and recovered[1] >= 0.5
    assert recovered[2:] == [0.0, 0.0, 0.0]
    assert rows[-1]["summary"]["target_refused_share"] == 1


def test_the_attack_flag_table_matches_the_attack_commands_options():
    """Every parameter the attack library may name renders as an option the commands have."""
    import typer

    from securefl.cli.app import app
    from securefl.cli.attack import ATTACK_FIELD_FLAGS, attack_flags

    group = typer.main.get_command(app).commands["attack"]
    options = {
        opt
        for command in (group, group.commands["compare"])
        for param in command.params
        for opt in [*param.opts, *param.secondary_opts]
    }
    table = attack_flags()
    assert table["learning_rate"] == "--lr" and table["secagg"] == "--defence secagg"
    assert {flag.split()[0] for flag in table.values()} <= options
    assert set(table) - set(ATTACK_FIELD_FLAGS) >= {
        "images",
        "batch_size",
        "bins",
        "clients",
        "max_grad_norm",
    }


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--images", "3", "--batch-size", "2"], "--images 3 is not a multiple of --batch-size 2"),
        (["--attack", "dlg", "--model", "mlp"], "use --attack ig (Inverting Gradients) or --model lenet"),
        (["--attack", "imprint", "--clients", "3"], "without --defence secagg"),
        (["--attack", "imprint", "--trials", "0"], "--clients, --batch-size and --trials must be at least 1"),
        (["--attack", "imprint", "--bins", "0"], "--bins 0 must be at least 1"),
        (["--attack", "imprint", "--seed", "-1"], "use a --seed in that range"),
    ],
)
def test_library_messages_name_attack_flags_at_the_cli(tmp_path, capsys, argv, message):
    assert main(["attack", *argv, "--out", str(tmp_path / "x")]) == 2
    error = " ".join(capsys.readouterr().err.split())
    assert message in error and "`" not in error
