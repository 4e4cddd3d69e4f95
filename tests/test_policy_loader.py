"""Loading policies into the typed model: values, defaults, locations, YAML pitfalls, schema."""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from textwrap import dedent
from typing import Any

import jsonschema
import pytest
import yaml

from policyc.errors import Location, PolicyError
from policyc.policy import check_policy, load_policy, load_policy_text
from policyc.policy._build import ALGORITHMS
from policyc.policy._schema import load_schema
from policyc.policy.model import (
    ALL_COLUMNS,
    RISKY_STATEMENTS,
    ColumnRef,
    Mask,
    ResultRecording,
    TableName,
    WriteGrant,
)

HERE = Path(__file__).resolve().parent
POLICIES = HERE / "policies"
GOOD = POLICIES / "good"
ROOT = HERE.parent
GOOD_POLICIES = [
    *sorted(GOOD.glob("*.yaml")),
    ROOT / "examples" / "clinic" / "policy.yaml",
    HERE / "fixtures" / "hospital" / "policy.yaml",
]

PATIENTS = TableName("public", "patients")
VISITS = TableName("public", "visits")
CLAIMS = TableName("public", "claims")


def load(text: str, **kwargs: Any) -> Any:
    return load_policy_text(dedent(text), source="p.yaml", **kwargs)


def problems(text: str) -> list[tuple[int, str, str]]:
    with pytest.raises(PolicyError) as info:
        load(text)
    return [(p.location.line, p.location.key, p.message) for p in info.value.problems]


@pytest.mark.parametrize("path", GOOD_POLICIES, ids=lambda p: str(p.relative_to(ROOT)))
def test_good_policies_load(path: Path) -> None:
    if not path.exists():
        pytest.fail(f"missing fixture {path}")
    assert check_policy(path) == []
    policy = load_policy(path)
    assert policy.source == str(path)
    assert policy.version == 1


@pytest.mark.parametrize("path", GOOD_POLICIES, ids=lambda p: str(p.relative_to(ROOT)))
def test_good_policies_satisfy_the_shipped_schema_as_editors_see_it(path: Path) -> None:
    data = yaml.safe_load(path.read_text())
    jsonschema.Draft202012Validator(dict(load_schema())).validate(data)


def test_architecture_sample_becomes_the_model() -> None:
    path = GOOD / "architecture.yaml"
    policy = load_policy(path)
    assert policy.database == "clinic"
    assert policy.proxy.service_role == "policyc_proxy"

    identity = policy.identity
    assert identity is not None
    assert identity.issuer == "https://idp.example.org/"
    assert identity.audience == "pg-gateway"
    assert identity.jwks == str(GOOD / "keys" / "jwks.json")
    assert os.path.isabs(identity.jwks) and os.path.exists(identity.jwks)
    assert identity.algorithms == ("RS256", "ES256")
    assert (identity.subject_claim, identity.groups_claim, identity.leeway_seconds) == (
        "sub",
        "groups",
        30,
    )

    assert policy.phi[PATIENTS] == {
        "ssn": Mask.HASH,
        "full_name": Mask.PARTIAL,
        "birth_date": Mask.YEAR,
        "zip": Mask.ZIP3,
        "email": Mask.REDACT,
    }
    assert policy.mask_of(ColumnRef(VISITS, "notes")) is Mask.REDACT
    assert policy.mask_of(ColumnRef(VISITS, "id")) is None

    billing = policy.group("billing")
    assert billing.oidc_groups == ("billing-agents",)
    assert billing.read == {
        PATIENTS: ("id", "clinic_id", "full_name", "ssn", "birth_date"),
        VISITS: ALL_COLUMNS,
    }
    assert billing.write == {
        CLAIMS: WriteGrant(insert=("patient_id", "amount", "code"), update=("status",))
    }
    assert billing.rows == {PATIENTS: "clinic_id = policyc.claim('clinic_id')::int"}
    assert billing.unmask == ()
    assert billing.approval.rows_over == 1000
    assert billing.approval.statements == (
        "copy_out",
        "delete_all",
        "update_all",
        "ddl",
        "truncate",
    )
    assert billing.approval.in_transaction == "hold"
    assert billing.allow_do is False
    assert billing.tables() == (CLAIMS, PATIENTS, VISITS)

    clinician = policy.group("clinician")
    assert clinician.oidc_groups == ("clinicians", "/org/care-team")
    assert clinician.write[VISITS] == WriteGrant(
        insert=("patient_id", "diagnosis", "notes"), update=("diagnosis", "notes"), delete=True
    )
    assert clinician.rows[VISITS].startswith("EXISTS (SELECT 1 FROM public.patients p\n")
    assert clinician.unmask == (
        ColumnRef(PATIENTS, "full_name"),
        ColumnRef(VISITS, "diagnosis"),
        ColumnRef(VISITS, "notes"),
    )
    assert clinician.approval.rows_over is None
    assert clinician.approval.in_transaction == "refuse"

    assert policy.approvals.approvers == ("security-analysts",)
    assert (policy.approvals.hold_seconds, policy.approvals.valid_for_seconds) == (120, 3600)
    assert policy.audit.retention_seconds == (6 * 365 + 2) * 86400
    assert policy.audit.results is ResultRecording.DIGEST
    assert policy.audit.results_limit_bytes == 16 * 1024 * 1024


def test_minimal_policy_takes_the_defaults() -> None:
    policy = load_policy(GOOD / "minimal.yaml")
    assert policy.identity is None
    assert policy.database is None
    assert policy.groups == ()
    assert policy.phi == {}
    assert policy.approvals.approvers == ()
    assert (policy.approvals.hold_seconds, policy.approvals.valid_for_seconds) == (120, 3600)
    assert policy.audit.results is ResultRecording.DIGEST
    assert policy.proxy.service_role == "policyc_proxy"


def test_bare_table_names_mean_public() -> None:
    policy = load_policy(GOOD / "shorthand.yaml")
    lab = TableName("lab", "results")
    assert set(policy.phi) == {PATIENTS, lab}
    intake = policy.group("intake")
    assert intake.read == {PATIENTS: ("id", "ssn", "dob"), lab: ALL_COLUMNS}
    assert intake.write == {PATIENTS: WriteGrant(insert=ALL_COLUMNS, update=("dob",))}
    assert intake.unmask == (
        ColumnRef(PATIENTS, "ssn"),
        ColumnRef(PATIENTS, "dob"),
        ColumnRef(lab, "value"),
    )
    assert policy.audit.results is ResultRecording.FULL
    assert policy.audit.results_limit_bytes == 512 * 1024
    assert policy.audit.retention_seconds == 2555 * 86400


def test_locations_point_at_every_key() -> None:
    path = GOOD / "architecture.yaml"
    policy = load_policy(path)
    file = str(path)
    assert policy.locations["groups.billing.read.public.patients"] == Location(
        file, 32, "groups.billing.read.public.patients"
    )
    assert policy.where("groups.billing.raed") == Location(file, 29, "groups.billing.raed")
    # list items: by index, and by name for columns and unmask entries
    assert policy.where("groups.billing.read.public.patients[3]").line == 32
    assert policy.where("groups.billing.read.public.patients.ssn").line == 32
    assert policy.where("groups.billing.write.public.claims.insert.amount").line == 35
    assert policy.where("groups.clinician.write.public.visits.update.notes").line == 50
    assert policy.where("groups.clinician.unmask.public.visits.notes").line == 57
    assert policy.where("groups.clinician.oidc_groups[1]").line == 43
    assert policy.where("phi.public.visits.notes").line == 26
    assert policy.where("audit.results_limit").line == 71
    # a key the file does not have: its nearest written parent, under the asked name
    assert policy.where("groups.billing.read.public.patients.missing") == Location(
        file, 32, "groups.billing.read.public.patients.missing"
    )
    assert policy.where("nothing.here") == Location(file, 1, "nothing.here")


def test_locations_use_qualified_table_names() -> None:
    policy = load_policy(GOOD / "shorthand.yaml")
    assert policy.where("phi.public.patients.ssn").line == 5
    assert policy.where("groups.intake.read.public.patients.dob").line == 13
    assert policy.where("groups.intake.unmask.public.patients.ssn").line == 17
    assert policy.where("groups.intake.rows.lab.results").line == 19


def test_load_policy_text_names_its_source_and_resolves_jwks(tmp_path: Path) -> None:
    text = """\
        version: 1
        identity: {issuer: i, audience: a, jwks: keys/k.json, algorithms: [EdDSA]}
        """
    policy = load_policy_text(dedent(text), base_dir=tmp_path)
    assert policy.source == "<string>"
    assert policy.identity is not None
    assert policy.identity.jwks == str(tmp_path / "keys" / "k.json")
    assert load_policy_text(dedent(text)).identity.jwks == os.path.join(  # type: ignore[union-attr]
        os.getcwd(), "keys", "k.json"
    )
    with pytest.raises(PolicyError) as info:
        load_policy_text("version: 2\n")
    assert str(info.value).startswith("<string>:1: version: ")


@pytest.mark.parametrize(
    ("jwks", "expected"),
    [
        ("https://idp.example.org/jwks.json", "https://idp.example.org/jwks.json"),
        ("/etc/policyc/jwks.json", "/etc/policyc/jwks.json"),
        ("../keys/./jwks.json", "/srv/keys/jwks.json"),
    ],
)
def test_jwks_forms(jwks: str, expected: str) -> None:
    text = f"""\
        version: 1
        identity: {{issuer: i, audience: a, jwks: "{jwks}", algorithms: [RS256]}}
        """
    assert load(text, base_dir="/srv/policy").identity.jwks == expected


def test_yaml_12_scalars_keep_column_names_and_decimals() -> None:
    policy = load(
        """\
        version: 01
        phi:
          public.t:
            "no": redact
        groups:
          g:
            oidc_groups: [g]
            read:
              public.t: [on, off, yes, no, y, n]
            unmask: [public.t.no]
        """
    )
    assert policy.version == 1
    assert policy.group("g").read[TableName("public", "t")] == ("on", "off", "yes", "no", "y", "n")


def test_the_null_mask_must_be_quoted() -> None:
    assert problems(
        """\
        version: 1
        phi:
          public.t:
            a: null
            b:
        """
    ) == [
        (4, "phi.public.t.a", _NULL_MASK),
        (5, "phi.public.t.b", _NULL_MASK),
    ]


_NULL_MASK = 'no mask given (YAML reads a bare null as empty): to use the null mask write "null"'


def test_duplicate_keys_are_reported_at_the_second() -> None:
    assert problems(
        """\
        version: 1
        audit:
          results: none
          retention: 6y
          results: full
        version: 1
        """
    ) == [
        (5, "audit.results", "duplicate key 'results' (first written on line 3)"),
        (6, "version", "duplicate key 'version' (first written on line 1)"),
    ]


def test_merge_keys_and_complex_keys_are_refused() -> None:
    found = problems(
        """\
        version: 1
        base: &base {delete: true}
        groups:
          g:
            oidc_groups: [g]
            write:
              public.t:
                <<: *base
        ? [a, b]
        : 1
        """
    )
    assert (
        8,
        "groups.g.write.public.t",
        "merge keys (<<) are not supported: write each entry out",
    ) in found
    assert (9, "(root)", "a key must be a plain name, not a list or mapping") in found
    assert any(key == "base" and "unknown key 'base'" in message for _, key, message in found)


def test_recursive_aliases_do_not_hang() -> None:
    found = problems("version: 1\ngroups: &g {a: *g}\n")
    assert any("recursive alias" in message for _, _, message in found)


def test_alias_bombs_are_cut_short() -> None:
    lines = ["version: 1", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)]
    found = problems("\n".join(lines) + "\n")
    assert any("too large" in message for _, _, message in found)


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("", 1, "the policy file is empty"),
        ("# only a comment\n", 1, "the policy file is empty"),
        ("version: 1\n---\nversion: 1\n", 2, "expected a single document"),
        ("version: [1\n", 2, "expected ',' or ']'"),
        ("version: 1\n  bad: indent\n", 2, "mapping values are not allowed"),
        ("groups:\n  a: 1\n b: 2\n", 3, "check the indentation"),
        ("version: !!python/object:os.system x\n", 1, "could not determine a constructor"),
        ("version: !!int 0x10\n", 1, "decimal digits"),
    ],
)
def test_yaml_errors_are_problems_with_lines(text: str, line: int, fragment: str) -> None:
    found = problems(text)
    assert any(found_line == line and fragment in message for found_line, _, message in found), (
        found
    )


def test_unreadable_files_are_policy_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(PolicyError) as info:
        load_policy(missing)
    (problem,) = info.value.problems
    assert problem.location == Location(str(missing), 1, "(file)")
    assert problem.message.startswith("cannot read the policy file: No such file")

    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("version: 1\ndatabase: caf\xe9\n".encode("latin-1"))
    assert [p.message for p in check_policy(latin1)] == ["the policy file is not UTF-8 text"]

    assert check_policy(tmp_path) != []  # a directory


def test_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbfversion: 1\n")
    assert load_policy(path).version == 1


def test_locations_survive_into_errors_of_later_stages() -> None:
    """The compiler reports catalog problems through Policy.where(): same file:line:key form."""
    policy = load_policy(GOOD / "architecture.yaml")
    location = policy.where("groups.billing.write.public.claims.insert.code")
    assert (
        str(location)
        == f"{GOOD / 'architecture.yaml'}:35: groups.billing.write.public.claims.insert.code"
    )


# --- the shipped JSON Schema -------------------------------------------------------------


def _schema_file() -> Any:
    return resources.files("policyc").joinpath("schema", "policy-v1.schema.json")


def test_schema_is_shipped_with_the_package_and_valid() -> None:
    assert _schema_file().is_file()
    schema = json.loads(_schema_file().read_text("utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema == dict(load_schema())


def test_schema_enums_match_the_model() -> None:
    defs = load_schema()["$defs"]
    assert defs["mask"]["enum"] == [m.value for m in Mask]
    assert defs["approval"]["properties"]["statements"]["items"]["enum"] == list(RISKY_STATEMENTS)
    audit = load_schema()["properties"]["audit"]["properties"]
    assert audit["results"]["enum"] == [r.value for r in ResultRecording]
    identity = load_schema()["properties"]["identity"]["properties"]
    assert identity["algorithms"]["items"]["enum"] == list(ALGORITHMS)


def _properties(node: object, where: str = "") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        for name, sub in node.get("properties", {}).items():
            found.append((f"{where}.{name}", sub))
        for key, sub in node.items():
            found.extend(_properties(sub, f"{where}/{key}"))
    elif isinstance(node, list):
        for sub in node:
            found.extend(_properties(sub, where))
    return found


def test_every_schema_property_is_described_and_objects_are_closed() -> None:
    schema = load_schema()
    defs = schema["$defs"]
    properties = _properties(schema)
    assert len(properties) > 30
    for where, sub in properties:
        target = defs[sub["$ref"].rsplit("/", 1)[1]] if "$ref" in sub else sub
        assert "description" in sub or "description" in target, where

    def closed(node: object) -> None:
        if isinstance(node, dict):
            if "properties" in node:
                assert node.get("additionalProperties") is False, node.get("description")
            for sub in node.values():
                closed(sub)
        elif isinstance(node, list):
            for sub in node:
                closed(sub)

    closed(schema)
