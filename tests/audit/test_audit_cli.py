"""`securefl audit` end to end, and every bad input mapped to exit code 2."""

from __future__ import annotations

import json

import pytest

from securefl.cli.app import main

SMALL = ["--dataset", "toy", "--rounds", "2", "--canaries", "200"]


def test_audit_writes_audit_json_and_the_figure(tmp_path, capsys):
    out = tmp_path / "audit"
    assert (
        main(["audit", "--dp", *SMALL, "--full-batch", "--noise-multiplier", "0.5", "--out", str(out)]) == 0
    )
    document = json.loads((out / "audit.json").read_text())
    assert document["mode"] == "dp" and document["break"] is None
    assert len(document["canary_scores"]) == len(document["canary_included"]) == 200
    assert 0 <= document["correct"] <= document["guesses"] <= 200
    assert document["accountant_epsilon"] > 0 and document["epsilon_lower_bound"] >= 0
    assert document["beta"] == pytest.approx(0.05)
    assert (out / "audit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ε lower bound" in capsys.readouterr().out


def test_central_audit_with_a_break_is_flagged(tmp_path, capsys):
    out = tmp_path / "audit"
    args = ["audit", "--central-dp", *SMALL, "--central-noise-multiplier", "4", "--break", "clip"]
    assert main([*args, "--out", str(out)]) == 0
    document = json.loads((out / "audit.json").read_text())
    assert document["break"] == "clip" and document["violation"] is True
    assert "guarantee is false" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args",
    [
        ["--dp", "--central-dp"],
        ["--dp", "--break", "everything"],
        ["--dp", "--break", "noise", "--break-factor", "2"],
        ["--break", "noise"],
        ["--canaries", "1"],
        ["--confidence", "1.5"],
        ["--central-dp", "--full-batch"],
        ["--dp", "--delta", "2"],
        ["--dataset", "nope"],
        ["--canaries", "many"],
        ["--black-box", "--dataset", "toy"],
        ["--black-box", "--canaries", "5000"],
    ],
)
def test_bad_inputs_exit_2(tmp_path, capsys, args):
    assert main(["audit", *args, "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()
    assert "Traceback" not in capsys.readouterr().err


def test_the_audit_flag_table_matches_the_audit_commands_options():
    """Every AuditConfig field has the audit option that sets it; the other options set run
    fields (FIELD_TO_FLAG), the output directory (OUTPUT_FLAGS) or the break's factor."""
    import typer

    from securefl.cli.app import app
    from securefl.cli.flags import AUDIT_FIELD_TO_FLAG, FIELD_TO_FLAG, OUTPUT_FLAGS

    command = typer.main.get_command(app).commands["audit"]
    options = {param.name: param.opts[0] for param in command.params}
    assert set(AUDIT_FIELD_TO_FLAG.values()) <= set(options.values())
    assert not set(AUDIT_FIELD_TO_FLAG) & (set(FIELD_TO_FLAG) | set(OUTPUT_FLAGS))
    run_flags = set(FIELD_TO_FLAG.values()) | set(OUTPUT_FLAGS.values())
    assert set(options.values()) <= set(AUDIT_FIELD_TO_FLAG.values()) | run_flags


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dp", "--central-dp"], "set --dp or --central-dp, not both"),
        (["--canaries", "1"], "change --canaries"),
        (["--confidence", "1.5"], "use e.g. --confidence 0.95"),
        (["--break", "noise"], "--break weakens a DP mechanism: set --dp or --central-dp with it"),
        (["--dp", "--break", "noise", "--break-factor", "2"], "change --break-factor"),
        (["--central-dp", "--full-batch"], "--full-batch is for sample-level audits"),
        (["--black-box", "--canaries", "5000"], "use fewer --canaries or --clients"),
        (
            [
                "--delta",
                "0.5",
                "--noise-multiplier",
                "3",
                "--break-factor",
                "0.7",
                "--rounds",
                "1",
                "--canaries",
                "2",
            ],
            "--noise-multiplier, --delta given without --dp: set --dp or drop them",
        ),
        (["--max-grad-norm", "2", "--accountant", "prv"], "--max-grad-norm, --accountant given without --dp"),
        (["--dp", "--clip-norm", "2"], "--clip-norm given without --central-dp"),
        (["--central-delta", "1e-6", "--client-sampling", "fixed"], "given without --central-dp"),
        (["--dp", "--break-factor", "0.5"], "--break-factor given without --break: set --break or drop it"),
    ],
)
def test_audit_messages_name_its_flags(tmp_path, capsys, args, message):
    assert main(["audit", *args, "--out", str(tmp_path / "x")]) == 2
    error = " ".join(capsys.readouterr().err.split())
    assert message in error and "`" not in error
