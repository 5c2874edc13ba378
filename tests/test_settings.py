"""Profiles: loading, environment overrides, strict validation and the errors a user reads.

Every test loads the real committed profiles (or a small YAML file written to tmp_path) through
`load_profile`, with an explicit `environ` so the developer's own environment cannot leak in.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from finetune_phi.chat_data.config import FileSource, SyntheticSource
from finetune_phi.settings import (
    ENV_PREFIX,
    PROFILE_ENV,
    PROFILES_DIR,
    TINY_MODEL,
    AzureBackendSettings,
    ConfigError,
    LocalBackendSettings,
    Profile,
    available_profiles,
    deep_merge,
    env_overrides,
    load_profile,
    profile_json_schema,
    profile_path,
)
from trainer.config import Hyperparameters

NO_ENV: dict[str, str] = {}


def write_profile(folder: Path, text: str, name: str = "custom.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def config_error(**kwargs: Any) -> str:
    """The message of the ConfigError that loading the local profile with `kwargs` raises."""
    kwargs.setdefault("environ", NO_ENV)
    with pytest.raises(ConfigError) as excinfo:
        load_profile("local", **kwargs)
    return str(excinfo.value)


# --- choosing and loading a profile ---------------------------------------------------------


def test_committed_profiles_are_available() -> None:
    assert {"local", "azure"} <= set(available_profiles())


def test_profile_path_maps_names_into_the_profiles_folder_and_keeps_paths() -> None:
    assert profile_path("local") == PROFILES_DIR / "local.yaml"
    assert profile_path("some/where/mine.yml") == Path("some/where/mine.yml")
    assert profile_path("/abs/mine.yaml") == Path("/abs/mine.yaml")


def test_local_profile_is_the_embedded_default(tmp_path: Path) -> None:
    profile = load_profile(environ=NO_ENV, cwd=tmp_path)

    assert isinstance(profile, Profile)
    assert profile.name == "local"
    assert isinstance(profile.backend, LocalBackendSettings)
    assert profile.model.base == TINY_MODEL
    assert isinstance(profile.data.source, SyntheticSource)
    assert isinstance(profile.training, Hyperparameters)
    assert profile.training.learning_rate == 0.002
    assert profile.training.eval_strategy == "no"
    assert profile.training_run.eval_before_training is True
    assert profile.endpoint.name == "phi3-chat-local"


def test_profile_env_variable_chooses_the_profile() -> None:
    assert load_profile(environ={PROFILE_ENV: "azure"}).name == "azure"


def test_explicit_profile_argument_beats_the_env_variable() -> None:
    assert load_profile("local", environ={PROFILE_ENV: "azure"}).name == "local"


def test_environ_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PROFILE_ENV, "azure")
    monkeypatch.setenv(f"{ENV_PREFIX}BACKEND__WORKSPACE", "ws-from-env")

    profile = load_profile()

    assert profile.name == "azure"
    assert isinstance(profile.backend, AzureBackendSettings)
    assert profile.backend.workspace == "ws-from-env"


def test_unknown_profile_name_lists_the_available_ones() -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_profile("no-such-profile", environ=NO_ENV)
    message = str(excinfo.value)
    assert "'no-such-profile' not found" in message
    assert "azure" in message and "local" in message


def test_a_profile_can_be_loaded_from_any_path(tmp_path: Path) -> None:
    path = write_profile(tmp_path, "name: mine\nbackend:\n  kind: local\n", name="mine.yml")

    profile = load_profile(str(path), environ=NO_ENV)

    assert profile.name == "mine"
    # Sections left out take their defaults.
    assert profile.training == Hyperparameters()
    assert profile.model.base == TINY_MODEL


# --- the azure profile ------------------------------------------------------------------------


def test_azure_profile_leaves_the_workspace_identity_to_the_environment() -> None:
    profile = load_profile("azure", environ=NO_ENV)

    assert isinstance(profile.backend, AzureBackendSettings)
    assert profile.backend.subscription_id is None
    assert profile.backend.resource_group is None
    assert profile.backend.workspace is None
    assert profile.backend.training_min_nodes == 0  # the cluster scales to zero
    assert profile.model.base == "microsoft/Phi-3.5-mini-instruct"
    assert profile.training.learning_rate == 5.0e-6


def test_environment_fills_in_the_azure_workspace_identity() -> None:
    subscription = "00000000-1111-2222-3333-444444444444"
    environ = {
        f"{ENV_PREFIX}BACKEND__SUBSCRIPTION_ID": subscription,
        f"{ENV_PREFIX}BACKEND__RESOURCE_GROUP": "rg-phi",
    }

    backend = load_profile("azure", environ=environ).backend

    assert isinstance(backend, AzureBackendSettings)
    assert backend.subscription_id == subscription
    assert backend.resource_group == "rg-phi"
    assert backend.workspace is None
    assert backend.region == "eastus2"  # the rest of the section still comes from the file


# --- environment overrides --------------------------------------------------------------------


def test_env_overrides_nest_lowercase_and_parse_yaml_scalars() -> None:
    environ = {
        f"{ENV_PREFIX}TRAINING__MAX_STEPS": "3",
        f"{ENV_PREFIX}TRAINING__PACKING": "false",
        f"{ENV_PREFIX}TRAINING__WARMUP_RATIO": "0.1",
        f"{ENV_PREFIX}BACKEND__WORKSPACE": "",
        f"{ENV_PREFIX}NAME": "ci",
        PROFILE_ENV: "azure",  # one underscore: chooses the profile, is not an override
        "PATH": "/usr/bin",
    }

    assert env_overrides(environ) == {
        "training": {"max_steps": 3, "packing": False, "warmup_ratio": 0.1},
        "backend": {"workspace": None},
        "name": "ci",
    }


@pytest.mark.parametrize("key", [ENV_PREFIX, f"{ENV_PREFIX}TRAINING____SEED", f"{ENV_PREFIX}A__"])
def test_env_override_with_an_empty_path_segment_is_an_error(key: str) -> None:
    with pytest.raises(ConfigError, match="empty path segment"):
        env_overrides({key: "1"})


def test_env_overrides_that_conflict_are_an_error() -> None:
    environ = {f"{ENV_PREFIX}TRAINING": "3", f"{ENV_PREFIX}TRAINING__SEED": "1"}
    with pytest.raises(ConfigError, match="conflicts"):
        env_overrides(environ)


def test_env_overrides_reach_nested_sections_and_keep_the_rest_of_the_file() -> None:
    environ = {
        f"{ENV_PREFIX}TRAINING__NUM_TRAIN_EPOCHS": "2",  # the example in local.yaml
        f"{ENV_PREFIX}DATA__SOURCE__CONVERSATIONS": "50",
    }

    profile = load_profile("local", environ=environ)

    assert profile.training.num_train_epochs == 2.0
    assert profile.training.learning_rate == 0.002  # untouched keys keep the file's values
    assert isinstance(profile.data.source, SyntheticSource)
    assert profile.data.source.conversations == 50
    assert profile.data.source.seed == 0


def test_explicit_overrides_beat_the_environment_which_beats_the_file() -> None:
    environ = {f"{ENV_PREFIX}TRAINING__SEED": "7", f"{ENV_PREFIX}TRAINING__MAX_STEPS": "9"}

    profile = load_profile("local", environ=environ, overrides={"training": {"seed": 11}})

    assert profile.training.seed == 11
    assert profile.training.max_steps == 9
    # Keys nobody overrode keep the file's value.
    file_value = yaml.safe_load((PROFILES_DIR / "local.yaml").read_text())["training"]
    assert profile.training.num_train_epochs == file_value["num_train_epochs"]


def test_env_override_accepts_exponent_notation_floats() -> None:
    environ = {f"{ENV_PREFIX}TRAINING__LEARNING_RATE": "1e-4"}
    assert load_profile("local", environ=environ).training.learning_rate == 1e-4


def test_env_override_can_set_eval_strategy_no() -> None:
    environ = {f"{ENV_PREFIX}TRAINING__EVAL_STRATEGY": "no"}
    assert load_profile("azure", environ=environ).training.eval_strategy == "no"


# --- the three sources together: file < environment < overrides ------------------------------

THREE_SOURCES_PROFILE = """\
name: three
backend: {kind: local}
training: {seed: 1, max_steps: 5, warmup_ratio: 0.3}
data:
  source: {kind: synthetic, conversations: 10, seed: 7}
"""


def test_each_nested_key_takes_the_highest_source_that_sets_it(tmp_path: Path) -> None:
    path = write_profile(tmp_path, THREE_SOURCES_PROFILE)
    environ = {
        f"{ENV_PREFIX}TRAINING__SEED": "2",
        f"{ENV_PREFIX}TRAINING__MAX_STEPS": "6",
        f"{ENV_PREFIX}DATA__SOURCE__CONVERSATIONS": "20",
    }
    overrides = {"training": {"seed": 3}, "data": {"source": {"conversations": 30}}}

    profile = load_profile(str(path), environ=environ, overrides=overrides)

    assert profile.training.seed == 3  # file, environment and override: the override
    assert profile.training.max_steps == 6  # file and environment: the environment
    assert profile.training.warmup_ratio == 0.3  # the file alone
    assert isinstance(profile.data.source, SyntheticSource)
    assert profile.data.source.conversations == 30
    assert profile.data.source.seed == 7


def test_env_variable_with_a_json_object_switches_a_sections_kind(tmp_path: Path) -> None:
    path = write_profile(tmp_path, THREE_SOURCES_PROFILE)
    environ = {f"{ENV_PREFIX}DATA__SOURCE": '{"kind": "file", "path": "chats.jsonl"}'}

    source = load_profile(str(path), environ=environ).data.source

    # Replaced, not merged: the file's synthetic keys would be unknown keys of a file source.
    assert isinstance(source, FileSource)
    assert source.path == Path("chats.jsonl")


def test_env_json_object_merges_with_nested_variables_and_keeps_its_strings() -> None:
    environ = {
        f"{ENV_PREFIX}BACKEND": '{"kind": "azure", "workspace": "3"}',
        f"{ENV_PREFIX}BACKEND__REGION": "westeurope",
    }

    backend = load_profile("local", environ=environ).backend

    assert isinstance(backend, AzureBackendSettings)
    assert backend.workspace == "3"  # a JSON string inside the object is not read again
    assert backend.region == "westeurope"
    assert env_overrides(environ) == {
        "backend": {"kind": "azure", "workspace": "3", "region": "westeurope"}
    }


def test_an_override_that_switches_the_kind_drops_what_the_environment_set_in_it() -> None:
    environ = {f"{ENV_PREFIX}DATA__SOURCE__SEED": "4"}
    overrides = {"data": {"source": {"kind": "file", "path": "chats.jsonl"}}}

    source = load_profile("local", environ=environ, overrides=overrides).data.source

    assert isinstance(source, FileSource)  # no "seed: unknown key" from the replaced section


def test_an_env_variable_and_an_override_of_the_same_kind_both_apply() -> None:
    environ = {f"{ENV_PREFIX}DATA__SOURCE__SEED": "4"}
    overrides = {"data": {"source": {"kind": "synthetic", "conversations": 5}}}

    source = load_profile("local", environ=environ, overrides=overrides).data.source

    assert isinstance(source, SyntheticSource)
    assert (source.conversations, source.seed) == (5, 4)


def test_only_upper_case_prefixed_variables_are_overrides() -> None:
    environ = {"finetune_phi__training__seed": "5", f"{ENV_PREFIX}training__max_steps": "4"}

    profile = load_profile("local", environ=environ)

    assert profile.training.seed == 0  # the file's: the prefix is matched as written
    assert profile.training.max_steps == 4  # the keys after it are case-insensitive


def test_file_and_override_keys_are_case_sensitive(tmp_path: Path) -> None:
    path = write_profile(tmp_path, "Name: upper\nname: lower\nbackend: {kind: local}\n")
    with pytest.raises(ConfigError, match="\n  Name: unknown key"):
        load_profile(str(path), environ=NO_ENV)
    assert "\n  Name: unknown key" in config_error(overrides={"Name": "x"})


# --- errors in what the environment set name the variable -------------------------------------


def test_a_misspelled_variable_is_an_unknown_key_naming_the_variable() -> None:
    message = config_error(environ={f"{ENV_PREFIX}TRANING__MAX_STEPS": "3"})

    assert str(PROFILES_DIR / "local.yaml") in message
    assert "\n  traning: unknown key (from FINETUNE_PHI__TRANING__MAX_STEPS)" in message


def test_bad_variables_are_reported_with_every_other_problem() -> None:
    environ = {f"{ENV_PREFIX}TRAINING__BOGUS": "1", f"{ENV_PREFIX}EXTRA": "true"}

    message = config_error(environ=environ, overrides={"data": {"bogus": 1}})

    assert "3 problem(s)" in message
    assert "\n  training.bogus: unknown key (from FINETUNE_PHI__TRAINING__BOGUS)" in message
    assert "\n  extra: unknown key (from FINETUNE_PHI__EXTRA)" in message
    assert "\n  data.bogus: unknown key\n" in message + "\n"  # an override: no variable


def test_a_wrong_type_from_a_variable_names_the_key_and_the_variable() -> None:
    message = config_error(environ={f"{ENV_PREFIX}TRAINING__SEED": "abc"})
    assert re.search(
        r"\n  training\.seed: .*\(got 'abc'\) \(from FINETUNE_PHI__TRAINING__SEED\)", message
    )


def test_a_variable_is_not_blamed_for_a_value_an_override_replaced() -> None:
    message = config_error(
        environ={f"{ENV_PREFIX}TRAINING__SEED": "abc"}, overrides={"training": {"seed": "x"}}
    )
    assert "(got 'x')" in message
    assert "FINETUNE_PHI__" not in message


def test_an_empty_variable_is_null() -> None:
    assert env_overrides({f"{ENV_PREFIX}NAME": ""}) == {"name": None}
    message = config_error(environ={f"{ENV_PREFIX}NAME": ""})
    assert (
        "\n  name: Input should be a valid string (got None) (from FINETUNE_PHI__NAME)" in message
    )
    assert env_overrides({f"{ENV_PREFIX}NAME": '""'}) == {"name": ""}  # JSON's empty string


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"NAME": "ci", "NAME__X": "1"},
            "FINETUNE_PHI__NAME__X: conflicts with another override of 'name'",
        ),
        ({"TRAINING": "null", "TRAINING__SEED": "1"}, "FINETUNE_PHI__TRAINING__SEED: conflicts"),
        ({"TRAINING__SEED": "1", "TRAINING__SEED__X": "2"}, "of 'seed'"),
    ],
)
def test_a_variable_under_a_value_that_is_not_a_mapping_is_a_conflict(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_profile("local", environ={ENV_PREFIX + k: v for k, v in environ.items()})


# --- errors name the file and every bad key ---------------------------------------------------


def test_unknown_key_is_named_as_a_dotted_path_with_the_file() -> None:
    message = config_error(overrides={"data": {"bogus": 1}})

    assert str(PROFILES_DIR / "local.yaml") in message
    assert "data.bogus: unknown key" in message


def test_every_bad_key_is_reported_at_once() -> None:
    message = config_error(
        overrides={"data": {"bogus": 1}, "training": {"learning_rate": "fast"}, "extra": True}
    )

    assert "3 problem(s)" in message
    assert "data.bogus: unknown key" in message
    assert "extra: unknown key" in message
    assert re.search(r"training\.learning_rate: .*\(got 'fast'\)", message)


@pytest.mark.parametrize(
    ("overrides", "dotted_key"),
    [
        ({"training": {"seed": "3"}}, "training.seed"),
        ({"training": {"max_steps": 2.5}}, "training.max_steps"),
        ({"training": {"warmup_ratio": "0.2"}}, "training.warmup_ratio"),
        ({"training": {"packing": "yes"}}, "training.packing"),
        ({"data": {"test_fraction": "0.2"}}, "data.test_fraction"),
        ({"data": {"max_tokens": "512"}}, "data.max_tokens"),
        ({"training_run": {"save_steps": "100"}}, "training_run.save_steps"),
        ({"backend": {"kind": "local"}, "name": 3}, "name"),
    ],
)
def test_strict_validation_never_coerces_strings_or_fractions(
    overrides: dict[str, Any], dotted_key: str
) -> None:
    message = config_error(overrides=overrides)
    assert f"\n  {dotted_key}: " in message


def test_an_int_is_accepted_for_a_float_field_and_stored_as_a_float() -> None:
    profile = load_profile("local", environ=NO_ENV, overrides={"training": {"num_train_epochs": 3}})
    assert profile.training.num_train_epochs == 3.0
    assert isinstance(profile.training.num_train_epochs, float)


def test_constraints_are_enforced() -> None:
    message = config_error(overrides={"data": {"test_fraction": 1.5}, "endpoint": {"name": "x"}})
    assert "data.test_fraction:" in message
    assert "endpoint.name:" in message


def test_unknown_backend_kind_is_rejected() -> None:
    message = config_error(overrides={"backend": {"kind": "gcp"}})
    assert "backend:" in message
    assert "'gcp'" in message


# --- the training section is trainer.config.Hyperparameters -----------------------------------


def test_unknown_training_key_is_rejected_naming_the_key() -> None:
    message = config_error(overrides={"training": {"bogus_rate": 1}})
    assert "training.bogus_rate:" in message


def test_unknown_training_key_reads_like_any_other_unknown_key() -> None:
    message = config_error(overrides={"training": {"bogus_rate": 1}})
    assert "training.bogus_rate: unknown key" in message


def test_wrong_training_type_is_rejected_naming_the_key() -> None:
    message = config_error(overrides={"training": {"num_train_epochs": "three"}})
    assert "training.num_train_epochs:" in message
    assert "(got 'three')" in message


def test_training_method_outside_the_literal_is_rejected() -> None:
    message = config_error(overrides={"training": {"method": "qlora"}})
    assert "training.method:" in message
    assert "'full' or 'lora'" in message
    assert "(got 'qlora')" in message


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        ({"data": {"source": {"kind": "synthetic", "bogus": 1}}}, "data.source.bogus: unknown key"),
        ({"backend": {"kind": "local", "region": "x"}}, "backend.region: unknown key"),
    ],
)
def test_bad_key_inside_a_tagged_section_is_named_by_its_path_in_the_file(
    overrides: dict[str, Any], line: str
) -> None:
    assert f"\n  {line}" in config_error(overrides=overrides)


# --- files that are not profiles --------------------------------------------------------------


def test_invalid_yaml_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = write_profile(tmp_path, "name: [unclosed\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}: not valid YAML")):
        load_profile(str(path), environ=NO_ENV)


def test_a_profile_must_be_a_mapping(tmp_path: Path) -> None:
    path = write_profile(tmp_path, "- name: local\n")
    with pytest.raises(ConfigError, match="a profile is a mapping of keys, got list"):
        load_profile(str(path), environ=NO_ENV)


def test_an_empty_file_reports_the_required_keys(tmp_path: Path) -> None:
    path = write_profile(tmp_path, "# nothing yet\n")
    with pytest.raises(ConfigError) as excinfo:
        load_profile(str(path), environ=NO_ENV)
    message = str(excinfo.value)
    assert message.startswith(f"{path}: invalid profile")
    assert "\n  name: " in message
    assert "\n  backend: " in message


def test_a_value_json_cannot_carry_is_an_error(tmp_path: Path) -> None:
    # YAML turns an unquoted date into a datetime.date; it is not a config value.
    path = write_profile(tmp_path, "name: 2024-01-01\nbackend: {kind: local}\n")
    with pytest.raises(ConfigError, match="unsupported type"):
        load_profile(str(path), environ=NO_ENV)
    with pytest.raises(ConfigError, match="unsupported type"):
        load_profile("local", environ=NO_ENV, overrides={"name": datetime.date(2024, 1, 1)})


# --- the state folder -------------------------------------------------------------------------


def test_relative_state_dir_is_resolved_against_cwd_and_not_created(tmp_path: Path) -> None:
    profile = load_profile("local", environ=NO_ENV, cwd=tmp_path)

    assert profile.state_dir == (tmp_path / "state").resolve()
    assert profile.state_dir.is_absolute()
    assert not profile.state_dir.exists()


def test_relative_state_dir_defaults_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    environ = {f"{ENV_PREFIX}STATE_DIR": "runs/one"}
    assert load_profile("local", environ=environ).state_dir == (tmp_path / "runs/one").resolve()


def test_absolute_state_dir_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    profile = load_profile(
        "local", environ=NO_ENV, overrides={"state_dir": str(target)}, cwd=tmp_path / "cwd"
    )
    assert profile.state_dir == target


# --- immutability -----------------------------------------------------------------------------


def test_profiles_are_frozen() -> None:
    profile = load_profile("azure", environ=NO_ENV)
    backend = profile.backend
    assert isinstance(backend, AzureBackendSettings)

    with pytest.raises(ValidationError, match="frozen"):
        profile.name = "changed"
    with pytest.raises(ValidationError, match="frozen"):
        backend.region = "westeurope"
    with pytest.raises(dataclasses.FrozenInstanceError):
        profile.training.learning_rate = 1.0  # type: ignore[misc]
    assert profile.name == "azure"
    assert backend.region == "eastus2"
    assert profile.training.learning_rate == 5.0e-6


# --- deep_merge -------------------------------------------------------------------------------


def test_deep_merge_merges_nested_mappings_without_mutating_its_inputs() -> None:
    base = {"training": {"seed": 0, "max_steps": -1}, "name": "local", "data": {"seed": 0}}
    override = {"training": {"seed": 3}, "data": "replaced", "endpoint": {"name": "e"}}
    base_before = json.dumps(base, sort_keys=True)
    override_before = json.dumps(override, sort_keys=True)

    merged = deep_merge(base, override)

    assert merged == {
        "training": {"seed": 3, "max_steps": -1},
        "name": "local",
        "data": "replaced",
        "endpoint": {"name": "e"},
    }
    assert json.dumps(base, sort_keys=True) == base_before
    assert json.dumps(override, sort_keys=True) == override_before


def test_deep_merge_lets_a_mapping_replace_a_scalar() -> None:
    assert deep_merge({"a": 1}, {"a": {"b": 2}}) == {"a": {"b": 2}}


# --- JSON schema ------------------------------------------------------------------------------


def test_json_schema_covers_every_section_and_forbids_unknown_keys() -> None:
    schema = profile_json_schema()

    json.dumps(schema)  # serialisable, for editors and `config schema`
    assert set(schema["properties"]) == set(Profile.model_fields)
    assert set(schema["required"]) == {"name", "backend"}
    assert schema["additionalProperties"] is False
    hyper = schema["$defs"]["Hyperparameters"]
    assert hyper["additionalProperties"] is False
    assert hyper["properties"]["method"]["enum"] == ["full", "lora"]
    assert {f.name for f in dataclasses.fields(Hyperparameters)} == set(hyper["properties"])


def test_committed_profiles_satisfy_the_json_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    import yaml

    validator = jsonschema.Draft202012Validator(profile_json_schema())
    for name in ("local", "azure"):
        data = yaml.safe_load(profile_path(name).read_text())
        assert list(validator.iter_errors(data)) == [], name
    bad = yaml.safe_load(profile_path("local").read_text())
    bad["training"]["bogus"] = 1
    assert list(validator.iter_errors(bad)), "the schema must reject an unknown training key"


# --- the config hash --------------------------------------------------------------------------


def test_config_hash_is_stable_across_instances() -> None:
    first, second = Hyperparameters(), Hyperparameters()
    assert first is not second
    assert first.config_hash() == second.config_hash()
    assert re.fullmatch(r"[0-9a-f]{64}", first.config_hash())


@pytest.mark.parametrize(
    "change",
    [{"learning_rate": 1e-5}, {"seed": 1}, {"method": "lora"}, {"packing": False}],
)
def test_config_hash_changes_when_a_value_changes(change: dict[str, Any]) -> None:
    assert Hyperparameters(**change).config_hash() != Hyperparameters().config_hash()


def test_config_hash_does_not_depend_on_how_a_float_was_written() -> None:
    as_int = load_profile("local", environ=NO_ENV, overrides={"training": {"num_train_epochs": 3}})
    as_float = load_profile(
        "local", environ=NO_ENV, overrides={"training": {"num_train_epochs": 3.0}}
    )
    assert as_int.training.config_hash() == as_float.training.config_hash()


def test_override_that_changes_a_sections_kind_replaces_the_section() -> None:
    profile = load_profile(
        "local",
        environ=NO_ENV,
        overrides={"data": {"source": {"kind": "file", "path": "chats.jsonl"}}},
    )
    assert profile.data.source.kind == "file"


def test_override_of_the_same_kind_merges_key_by_key() -> None:
    profile = load_profile(
        "local", environ=NO_ENV, overrides={"data": {"source": {"kind": "synthetic", "seed": 4}}}
    )
    assert isinstance(profile.data.source, SyntheticSource)
    assert profile.data.source.seed == 4
    assert profile.data.source.conversations == 1200  # kept from the file


# --- the training cluster's size --------------------------------------------------------------


def test_more_training_nodes_than_the_cluster_has_is_an_error_naming_both_keys() -> None:
    message = config_error_of(
        "azure", {"backend": {"training_instance_count": 3, "training_max_nodes": 2}}
    )
    assert "backend.training_instance_count" in message
    assert "more than backend.training_max_nodes (2)" in message
    assert "(got 3)" in message


def test_a_job_as_big_as_the_cluster_is_allowed() -> None:
    backend = load_profile(
        "azure",
        environ=NO_ENV,
        overrides={"backend": {"training_instance_count": 2, "training_max_nodes": 2}},
    ).backend
    assert isinstance(backend, AzureBackendSettings)
    assert (backend.training_instance_count, backend.training_max_nodes) == (2, 2)


def test_instance_count_from_the_environment_is_checked_against_the_cluster_too() -> None:
    environ = {f"{ENV_PREFIX}BACKEND__TRAINING_INSTANCE_COUNT": "2"}
    with pytest.raises(ConfigError) as excinfo:
        load_profile("azure", environ=environ)
    message = str(excinfo.value)
    assert "more than backend.training_max_nodes (1)" in message
    assert f"{ENV_PREFIX}BACKEND__TRAINING_INSTANCE_COUNT" in message  # names the variable


def config_error_of(profile: str, overrides: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as excinfo:
        load_profile(profile, environ=NO_ENV, overrides=overrides)
    return str(excinfo.value)
