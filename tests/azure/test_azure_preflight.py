"""Preflight against the fake service; the CLI's dry run needs no Azure at all."""

from __future__ import annotations

import argparse

from azure_helpers import FakeCredential, make_azure_workspace

from backends.azure.preflight import preflight_ok, run_preflight


def _failures(checks):
    return [c for c in checks if not c.ok]


def test_preflight_passes_on_a_ready_workspace(azure_fake, azure_workspace):
    checks = run_preflight(azure_workspace, "phi3-chat")
    assert preflight_ok(checks), [c.line() for c in checks]
    assert {c.name for c in checks} == {
        "settings",
        "credential",
        "workspace",
        "sku",
        "quota",
        "endpoint",
    }
    assert azure_fake.count("PUT", ".") == 0  # reads only


def test_preflight_names_each_problem_in_one_line(azure_fake, tmp_path):
    azure_fake.quota["standardNCADSA100v4Family"] = (20, 24)
    ws = make_azure_workspace(azure_fake, tmp_path, inference_sku="Standard_NC6_Nope")
    failures = _failures(run_preflight(ws, "bad_name!"))
    messages = "\n".join(c.message for c in failures)
    assert "needs 24 vCPUs" in messages and "4 free" in messages
    assert "Standard_NC6_Nope is not offered" in messages
    assert "endpoint name 'bad_name!' is invalid" in messages
    assert all("\n" not in c.message for c in failures)


def test_preflight_stops_at_missing_settings_credential_or_workspace(azure_fake, tmp_path):
    missing = make_azure_workspace(azure_fake, tmp_path, workspace=None)
    assert "FINETUNE_PHI__BACKEND__WORKSPACE" in run_preflight(missing, "phi3-chat")[0].message
    no_login = make_azure_workspace(azure_fake, tmp_path, credential=FakeCredential(fail=True))
    checks = run_preflight(no_login, "phi3-chat")
    assert checks[-1].name == "credential" and "az login" in checks[-1].message
    other = make_azure_workspace(azure_fake, tmp_path, workspace="not-there")
    checks = run_preflight(other, "phi3-chat")
    assert checks[-1].name == "workspace" and "not found" in checks[-1].message
    wrong_region = make_azure_workspace(azure_fake, tmp_path, region="westeurope")
    assert "set backend.region: eastus2" in run_preflight(wrong_region, "phi3-chat")[-1].message


def test_cli_dry_run_and_wrong_profile(capsys, monkeypatch, tmp_path):
    import pytest

    from cli.azure_ml import add_azure_parser, run_azure_command
    from finetune_phi.settings import ConfigError, load_profile

    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command")
    add_azure_parser(commands, lambda sub: sub, lambda args: 0)
    args = parser.parse_args(["azure", "dry-run", "--output", str(tmp_path / "plan.yaml")])
    assert run_azure_command(args, load_profile("azure", environ={})) == 0
    text = (tmp_path / "plan.yaml").read_text()
    assert "commandJob.schema.json" in text and "call plan" in text
    with pytest.raises(ConfigError, match="azure profile"):
        run_azure_command(args, load_profile("local", environ={}))
