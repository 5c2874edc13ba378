"""Preflight against the fake service (its DNS of endpoint hosts included: nothing is looked
up outside); the CLI's dry run needs no Azure at all."""

from __future__ import annotations

import argparse
import socket
import threading

import fake_azure
import pytest
from azure_helpers import FakeCredential, job_spec, make_azure_workspace

from backends.azure import preflight
from backends.azure.preflight import ENDPOINT_NAME, preflight_ok, run_preflight


def _failures(checks):
    return [c for c in checks if not c.ok]


def _run(workspace, fake, name="phi3-chat"):
    return run_preflight(workspace, name, resolve=fake.resolves)


def _quota(checks):
    return {c.message.split(" vCPUs of ")[1].split(":")[0]: c for c in checks if c.name == "quota"}


def test_preflight_passes_on_a_ready_workspace(azure_fake, azure_workspace):
    checks = _run(azure_workspace, azure_fake)
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
    failures = _failures(_run(ws, azure_fake, "bad_name!"))
    messages = "\n".join(c.message for c in failures)
    assert "needs 24 vCPUs" in messages and "4 free" in messages
    assert "Standard_NC6_Nope is not on the managed online endpoints SKU list" in messages
    assert "endpoint name 'bad_name!' is invalid" in messages
    assert all("\n" not in c.message for c in failures)


def test_preflight_stops_at_missing_settings_credential_or_workspace(azure_fake, tmp_path):
    missing = make_azure_workspace(azure_fake, tmp_path, workspace=None)
    assert "FINETUNE_PHI__BACKEND__WORKSPACE" in _run(missing, azure_fake)[0].message
    no_login = make_azure_workspace(azure_fake, tmp_path, credential=FakeCredential(fail=True))
    checks = _run(no_login, azure_fake)
    assert checks[-1].name == "credential" and "az login" in checks[-1].message
    other = make_azure_workspace(azure_fake, tmp_path, workspace="not-there")
    checks = _run(other, azure_fake)
    assert checks[-1].name == "workspace" and "not found" in checks[-1].message
    wrong_region = make_azure_workspace(azure_fake, tmp_path, region="westeurope")
    assert "set backend.region: eastus2" in _run(wrong_region, azure_fake)[-1].message


# --------------------------------------------------------------------------- quota (#14, 1)


def test_quota_counts_both_colours_with_the_20_percent_reservation(azure_fake, tmp_path):
    """Two Standard_E4s_v3 deployments of one instance (a blue-green rollout) reserve
    2 x ceil(1.2 x 1) x 4 = 16 vCPUs of standardESv3Family, not 4."""
    ws = make_azure_workspace(azure_fake, tmp_path)
    azure_fake.quota["standardESv3Family"] = (0, 15)
    short = _quota(_run(ws, azure_fake))["standardESv3Family"]
    assert not short.ok and "needs 16 vCPUs of standardESv3Family" in short.message
    assert "2 deployments (both colours of a blue-green rollout)" in short.message
    assert "15 free" in short.message
    azure_fake.quota["standardESv3Family"] = (4, 20)
    assert _quota(_run(ws, azure_fake))["standardESv3Family"].ok  # 16 of 16 free

    three = make_azure_workspace(azure_fake, tmp_path, inference_instance_count=3)
    azure_fake.quota["standardESv3Family"] = (0, 31)
    assert "needs 32 vCPUs" in _quota(_run(three, azure_fake))["standardESv3Family"].message


def test_quota_of_an_exempt_sku_sharing_the_clusters_family_adds_up(azure_fake, tmp_path):
    """NC24ads_A100_v4 skips the 20% (the SKU list says so); the cluster idles with its nodes
    while the rollout runs, so one family holds 24 + 2 x 1 x 24."""
    ws = make_azure_workspace(azure_fake, tmp_path, inference_sku="Standard_NC24ads_A100_v4")
    azure_fake.quota["standardNCADSA100v4Family"] = (0, 71)
    check = _quota(_run(ws, azure_fake))["standardNCADSA100v4Family"]
    assert not check.ok and "needs 72 vCPUs" in check.message
    assert "training 24" in check.message and "inference 48" in check.message


def test_inference_sku_is_checked_against_the_managed_online_endpoint_list(
    azure_fake, tmp_path, monkeypatch
):
    """An AmlCompute size of the region that managed online endpoints do not take fails; a
    managed size the region's AmlCompute list lacks passes, its cores from the SKU list."""
    monkeypatch.setitem(fake_azure.VM_SIZES, "Standard_D4_v2", ("standardDv2Family", 8, 0))
    ws = make_azure_workspace(azure_fake, tmp_path, inference_sku="Standard_D4_v2")
    failures = _failures(_run(ws, azure_fake))
    assert [c.name for c in failures] == ["sku"]
    assert "Standard_D4_v2 is not on the managed online endpoints SKU list" in failures[0].message

    azure_fake.quota["standardFSv2Family"] = (0, 16)
    ws = make_azure_workspace(azure_fake, tmp_path, inference_sku="Standard_F4s_v2")
    checks = _run(ws, azure_fake)
    assert preflight_ok(checks), [c.line() for c in checks]
    assert (
        "16 of 16 free vCPUs of standardFSv2Family" in _quota(checks)["standardFSv2Family"].message
    )


def test_deployments_the_endpoint_already_has_are_counted_in_the_usage(
    azure_fake, azure_workspace, dataset_files
):
    """With blue live, a rollout adds one deployment: 8 vCPUs more, and the endpoint, being
    this workspace's, is fine even though its host resolves."""
    ws = azure_workspace
    job = ws.jobs.submit_job(job_spec(*dataset_files))
    list(ws.jobs.stream_job_logs(job.name))
    done = ws.jobs.get_job(job.name)
    model = ws.registry.register_model("phi3-chat", done.model_uri, tags={}, job_name=done.name)
    from finetune_phi.rollout import execute_rollout, plan_rollout
    from finetune_phi.settings import RolloutSettings
    from finetune_phi.workspace import TrafficState

    settings = RolloutSettings(traffic_steps=(100,), mirror_percent=0, requests_per_step=1)
    ws.endpoints.get_or_create_endpoint("phi3-chat")
    plan = plan_rollout(TrafficState(), {}, f"{model.name}:{model.version}", settings)
    execute_rollout(ws, "phi3-chat", model, plan, settings, log=lambda _: None)

    azure_fake.quota["standardESv3Family"] = (8, 16)  # blue's 2 x 4, 8 free
    checks = _run(ws, azure_fake)
    assert preflight_ok(checks), [c.line() for c in checks]
    esv3 = _quota(checks)["standardESv3Family"].message
    assert esv3.startswith("8 of 8 free") and "1 new deployment" in esv3
    endpoint = next(c for c in checks if c.name == "endpoint")
    assert "exists in workspace ws-finetune" in endpoint.message


# --------------------------------------------------------------------------- endpoint name (#14, 2)


def test_an_endpoint_name_taken_in_the_region_fails_with_a_distinctive_one(azure_fake, tmp_path):
    ws = make_azure_workspace(azure_fake, tmp_path)
    azure_fake.taken_endpoint_names.add("phi3-chat")  # another customer's, in eastus2
    checks = _run(ws, azure_fake)
    failure = next(c for c in checks if c.name == "endpoint")
    assert not failure.ok and not preflight_ok(checks)
    assert "phi3-chat is taken in eastus2" in failure.message
    assert "phi3-chat.eastus2.inference.ml.azure.com resolves" in failure.message
    suggestion = failure.message.rsplit("such as ", 1)[1]
    assert suggestion.startswith("phi3-chat-") and ENDPOINT_NAME.fullmatch(suggestion)
    assert suggestion == preflight.distinctive_name("phi3-chat", ws)  # the same every time
    assert preflight_ok(_run(ws, azure_fake, suggestion))
    long = preflight.distinctive_name("a" * 32, ws)
    assert len(long) == 32 and ENDPOINT_NAME.fullmatch(long)
    # ... as the service would have said on creating it:
    with pytest.raises(Exception, match="unique within a region"):
        ws.endpoints.get_or_create_endpoint("phi3-chat")


def test_a_name_check_that_cannot_tell_warns_without_failing(azure_fake, tmp_path):
    ws = make_azure_workspace(azure_fake, tmp_path)
    asked = []

    def no_dns(host):
        asked.append(host)
        return None

    checks = run_preflight(ws, "phi3-chat", resolve=no_dns)
    endpoint = checks[-1]
    assert preflight_ok(checks) and endpoint.warning
    assert endpoint.line().startswith("warn endpoint")
    assert "could not tell whether phi3-chat is free in eastus2 (DNS lookup failed)" in (
        endpoint.message
    )
    assert asked[0] == "phi3-chat.eastus2.inference.ml.azure.com"
    # A resolver that answers for any name (a made-up one too) tells nothing either.
    checks = run_preflight(ws, "phi3-chat", resolve=lambda host: True)
    assert checks[-1].warning and "DNS answers for any name" in checks[-1].message


def test_dns_resolves_reads_getaddrinfo(monkeypatch):
    def answer(error):
        def getaddrinfo(host, port):
            if error is not None:
                raise socket.gaierror(error, "fake")
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.1", port))]

        return getaddrinfo

    monkeypatch.setattr(socket, "getaddrinfo", answer(None))
    assert preflight.dns_resolves("x.eastus2.inference.ml.azure.com") is True
    monkeypatch.setattr(socket, "getaddrinfo", answer(socket.EAI_NONAME))
    assert preflight.dns_resolves("x.eastus2.inference.ml.azure.com") is False
    monkeypatch.setattr(socket, "getaddrinfo", answer(socket.EAI_AGAIN))
    assert preflight.dns_resolves("x.eastus2.inference.ml.azure.com") is None
    release = threading.Event()
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, port: release.wait(5))
    assert preflight.dns_resolves("x.eastus2.inference.ml.azure.com", timeout=0.05) is None
    release.set()  # a resolver that does not answer in time: cannot tell


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
