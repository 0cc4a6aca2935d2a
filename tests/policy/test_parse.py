"""Parsing and validation: every error kind is located by file, line and field,
a policy with any error is refused whole, and the bundled templates parse."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from ilm.policy import PolicyError, check_policy, parse_policy
from ilm.policy.errors import ISSUE_KINDS

from .helpers import TIERS

TEMPLATES = sorted((Path(__file__).resolve().parents[2] / "policies").glob("*.yaml"))

GOOD_RULE = "  - id: ok\n    when: {modality: CT}\n    action: {transition: warm}\n"

# (policy text, kind, line, field, fragment of the message); lines are 1-based.
ERRORS: dict[str, tuple[str, str, int, str, str]] = {
    "yaml-syntax": ("rules:\n  - id: a\n    action: [expire\n", "yaml", 4, "", "started on line 3"),
    "yaml-tab": ("rules:\n\t- id: a\n", "yaml", 2, "", "not valid YAML"),
    "empty-file": ("", "yaml", 0, "", "empty"),
    "top-not-mapping": ("- a\n- b\n", "bad_value", 1, "", "expected a mapping"),
    "unknown-top-key": ("nmae: x\nrules: []\n", "unknown_key", 1, "nmae", "did you mean 'name'"),
    "missing-rules": ("name: x\n", "missing", 1, "rules", "needs a 'rules' list"),
    "unknown-rule-key": ("rules:\n  - id: a\n    actoin: expire\n    action: expire\n", "unknown_key", 3,
                         "rules[0].actoin", "did you mean 'action'"),
    "unknown-attribute": ("rules:\n  - id: a\n    when:\n      modalty: CT\n    action: expire\n", "unknown_attribute", 4,
                          "rules[0].when.modalty", "did you mean 'modality'"),
    "retain-inside-when": ("rules:\n  - id: a\n    when:\n      retain: {birth_plus: P20Y}\n    action: expire\n",
                           "unknown_attribute", 4, "rules[0].when.retain", "goes beside 'when'"),
    "unknown-tier-action": ("rules:\n  - id: a\n    action: {transition: cold}\n", "unknown_tier", 3,
                            "rules[0].action.transition", "configured tiers: hot, warm"),
    "unknown-tier-condition": ("rules:\n  - id: a\n    when: {current_tier: [hot, wram]}\n    action: expire\n",
                               "unknown_tier", 3, "rules[0].when.current_tier", "'wram' (did you mean 'warm'?)"),
    "bad-duration-condition": ("rules:\n  - id: a\n    when:\n      study_age:\n        older_than: 10 years\n"
                               "    action: expire\n", "bad_duration", 5, "rules[0].when.study_age.older_than", "'10 years'"),
    "duration-without-unit": ("rules:\n  - id: a\n    when: {study_age: {older_than: 30}}\n    action: expire\n",
                              "bad_duration", 3, "rules[0].when.study_age.older_than", "write 30d"),
    "bad-duration-retain": ("rules:\n  - id: a\n    retain:\n      max:\n        - birth_plus: P20Y\n"
                            "        - last_encounter_plus: PT10H\n    action: expire\n", "bad_duration", 6,
                            "rules[0].retain.max[1].last_encounter_plus", "hours"),
    "bad-duration-protection": ("protections:\n  minimum_retention:\n    period: five years\nrules: []\n", "bad_duration", 3,
                                "protections.minimum_retention.period", "not a period"),
    "bad-size": ("rules:\n  - id: a\n    when: {study_size: {at_least: 500 parsecs}}\n    action: expire\n", "bad_size", 3,
                 "rules[0].when.study_size.at_least", "500 parsecs"),
    "bad-regex": ("rules:\n  - id: a\n    when:\n      description: {regex: 'CT ([a-z'}\n    action: expire\n",
                  "bad_regex", 4, "rules[0].when.description.regex", "bad regular expression"),
    "unknown-matcher": ("rules:\n  - id: a\n    when:\n      modality: {equal: CT}\n    action: expire\n", "unknown_key", 4,
                        "rules[0].when.modality.equal", "did you mean 'equals'"),
    "missing-action": ("rules:\n  - id: a\n    when: {modality: CT}\n", "missing", 2, "rules[0].action", "needs one action"),
    "missing-id": ("rules:\n" + GOOD_RULE + "  - when: {modality: MR}\n    action: expire\n", "missing", 5, "rules[1].id",
                   "needs an id"),
    "bad-id": ("rules:\n  - id: 'a rule'\n    action: expire\n", "bad_value", 2, "rules[0].id", "letters, digits"),
    "duplicate-id": ("rules:\n" + GOOD_RULE + "  - id: ok\n    when: {modality: MR}\n    action: expire\n", "duplicate_id", 5,
                     "rules[1].id", "already used on line 2"),
    "shadowed-by-catch-all": ("rules:\n  - id: all\n    action: {transition: warm}\n  - id: mg\n    when: {modality: MG}\n"
                              "    action: expire\n", "shadowed", 4, "rules[1]", "'all' (line 2) comes first and has no conditions, so it matches every study"),
    "shadowed-by-subset": ("rules:\n" + GOOD_RULE + "  - id: ct-old\n    when: {study_age: {older_than: 5y}, Modality: ct}\n"
                           "    action: expire\n", "shadowed", 5, "rules[1]", "matches every study this one would"),
    "retain-on-transition": ("rules:\n  - id: a\n    retain: {birth_plus: P20Y}\n    action: {transition: warm}\n", "bad_value",
                             3, "rules[0].retain", "only makes sense on an expire rule"),
    "retain-two-terms": ("rules:\n  - id: a\n    retain: {birth_plus: P20Y, study_date_plus: P5Y}\n    action: expire\n",
                         "bad_value", 3, "rules[0].retain", "use max"),
    "retain-unknown-term": ("rules:\n  - id: a\n    retain: {brith_plus: P10Y}\n    action: expire\n", "unknown_key", 3,
                            "rules[0].retain.brith_plus", "unknown retention term 'brith_plus' (did you mean 'birth_plus'?)"),
    "retain-death-plus": ("rules:\n  - id: a\n    retain: {death_plus: P10Y}\n    action: expire\n", "unknown_key", 3,
                          "rules[0].retain.death_plus", "no date of death"),
    "mqsa-inverted": ("rules:\n  - id: a\n    retain:\n      mqsa: {years: 10, without_later_mammogram_years: 5}\n"
                      "    action: expire\n", "bad_value", 4, "rules[0].retain.mqsa", "shorter than years"),
    "protection-off-without-reason": ("protections:\n  pediatric:\n    enabled: false\nrules: []\n", "missing", 3,
                                      "protections.pediatric.reason", "needs a reason"),
    "legal-hold-cannot-be-off": ("protections:\n  legal_hold: {enabled: false, reason: x}\nrules: []\n", "bad_value", 2,
                                 "protections.legal_hold.enabled", "cannot be turned off"),
    "protection-scalar-off": ("protections:\n  mammography: off\nrules: []\n", "bad_value", 2, "protections.mammography",
                              "enabled: false, reason"),
    "unknown-protection": ("protections:\n  pediatrics: {age_of_majority: 21}\nrules: []\n", "unknown_key", 2,
                           "protections.pediatrics", "did you mean 'pediatric'"),
    "bad-action-word": ("rules:\n  - id: a\n    action: expir\n", "bad_value", 3, "rules[0].action", "did you mean 'expire'"),
    "transition-without-tier": ("rules:\n  - id: a\n    action: transition\n", "missing", 3, "rules[0].action", "needs its tier"),
    "auto-apply-not-bool": ("auto_apply: maybe\nrules: []\n", "bad_value", 1, "auto_apply", "true or false"),
    "duplicate-key": ("rules:\n  - id: a\n    when:\n      modality: CT\n      modality: MR\n    action: expire\n", "bad_value",
                      5, "rules[0].when.modality", "duplicate key"),
    "empty-when": ("rules:\n  - id: a\n    when: {}\n    action: expire\n", "bad_value", 3, "rules[0].when", "no conditions"),
    "bad-date": ("rules:\n  - id: a\n    when: {study_date: {before: 2015-02-30}}\n    action: expire\n", "bad_value", 3,
                 "rules[0].when.study_date.before", "not a date"),
    "any-single-group": ("rules:\n  - id: a\n    when: {any: [{modality: CT}]}\n    action: expire\n", "bad_value", 3,
                         "rules[0].when.any", "at least two"),
    "age-bounds-missing": ("rules:\n  - id: a\n    when: {study_age: {}}\n    action: expire\n", "missing", 3,
                           "rules[0].when.study_age", "older_than or younger_than"),
    "majority-out-of-range": ("protections:\n  pediatric: {age_of_majority: 99}\nrules: []\n", "bad_value", 2,
                              "protections.pediatric.age_of_majority", "out of range"),
}


@pytest.mark.parametrize("text, kind, line, field, fragment", list(ERRORS.values()), ids=list(ERRORS))
def test_error_is_located(text: str, kind: str, line: int, field: str, fragment: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, known_tiers=TIERS, source="site.yaml")
    issues = caught.value.issues
    assert issues, "a refused policy names at least one problem"
    first = issues[0]
    assert (first.kind, first.line, first.field) == (kind, line, field), issues
    assert fragment in first.message, first.message
    # the printable form is file:line: field: message
    prefix = f"site.yaml:{line}: " if line else "site.yaml: "
    assert str(first).startswith(prefix + (f"{field}: " if field else ""))
    assert str(first) in str(caught.value)


def test_every_issue_kind_is_exercised() -> None:
    assert {kind for _, kind, *_ in ERRORS.values()} == set(ISSUE_KINDS)


def test_all_errors_reported_at_once_and_policy_refused_whole() -> None:
    text = (
        "name: x\n"
        "rules:\n"
        "  - id: a\n"
        "    when: {modalty: CT}\n"                    # line 4
        "    action: {transition: cold}\n"             # line 5
        "  - id: b\n"
        "    when: {study_age: {older_than: 10}}\n"    # line 7
        "    action: expire\n"
        "  - id: c\n"
        "    when: {modality: MR}\n"
        "    action: {transition: warm}\n"             # a valid rule does not save the policy
    )
    policy, issues = check_policy(text, known_tiers=TIERS, source="p.yaml")
    assert policy is None
    assert [(i.line, i.kind) for i in issues] == [(4, "unknown_attribute"), (5, "unknown_tier"), (7, "bad_duration")]


def test_known_tiers_come_from_the_caller() -> None:
    text = "rules:\n  - id: a\n    action: {transition: glacier}\n"
    assert parse_policy(text, known_tiers={"hot", "glacier"}).rules[0].tier == "glacier"
    with pytest.raises(PolicyError, match="unknown tier 'glacier'"):
        parse_policy(text, known_tiers={"hot"})


def test_valid_policy_fields() -> None:
    text = (
        "name: site\nversion: 3\ndescription: d\nauto_apply: true\n"
        "rules:\n  - id: a\n    description: move\n    when: {modality: CT}\n    action: {transition: warm}\n"
    )
    p = parse_policy(text, known_tiers=TIERS, source="s.yaml")
    assert (p.name, p.version, p.description, p.auto_apply, p.may_auto_apply) == ("site", "3", "d", True, True)
    assert p.rules[0].line == 6 and p.rules[0].description == "move"
    assert p.digest == hashlib.sha256(text.encode()).hexdigest()
    assert p.source == "s.yaml" and p.warnings == ()
    assert p.tiers() == {"warm"} and not p.expires


def test_yaml_words_stay_text() -> None:
    # YAML 1.1 reads NO/ON/YES as booleans; attribute values are kept as written
    p = parse_policy("rules:\n  - {id: a, when: {sex: NO, station: ON}, action: keep}\n", known_tiers=TIERS)
    keys = {c.key() for c in p.rules[0].conditions}
    assert ("sex", ("one_of", frozenset({"no"}))) in keys


def test_warnings_auto_apply_with_expiry_and_protection_off() -> None:
    text = (
        "auto_apply: true\n"
        "protections:\n  recently_accessed: {enabled: false, reason: 'archive is read by a crawler'}\n"
        "rules:\n  - {id: a, when: {modality: OT}, action: expire}\n"
    )
    p = parse_policy(text, known_tiers=TIERS, source="w.yaml")
    assert not p.may_auto_apply
    messages = [str(w) for w in p.warnings]
    assert any("auto_apply: ignored" in m for m in messages)
    assert any("recently_accessed is OFF: archive is read by a crawler" in m for m in messages)
    assert "recently_accessed: OFF (archive is read by a crawler)" in p.protections.summary()


def test_default_protections_are_all_on() -> None:
    p = parse_policy("rules: []\n", known_tiers=TIERS)
    assert p.protections.disabled() == ()
    assert all(": on (" in line for line in p.protections.summary())
    assert len(p.protections.summary()) == 7


def test_protection_settings_are_read() -> None:
    text = (
        "protections:\n"
        "  mammography: {years: 6, without_later_mammogram_years: 12}\n"
        "  pediatric: {age_of_majority: 21, years_after_majority: 3}\n"
        "  minimum_retention: {period: 7y}\n"
        "  recently_accessed: {within: 2w}\n"
        "rules: []\n"
    )
    pr = parse_policy(text, known_tiers=TIERS).protections
    assert (pr.mammography.years, pr.mammography.without_later_mammogram_years) == (6, 12)
    assert (pr.pediatric.age_of_majority, pr.pediatric.years_after_majority) == (21, 3)
    assert str(pr.minimum_retention.period) == "P7Y" and str(pr.recently_accessed.within) == "P14D"


@pytest.mark.parametrize("path", TEMPLATES, ids=[p.name for p in TEMPLATES])
def test_templates_parse(path: Path) -> None:
    p = parse_policy(path.read_text(), known_tiers={"hot", "warm"}, source=path.name)
    assert p.rules and p.name == path.stem
    assert p.warnings == ()  # templates turn nothing off
    assert "warm" in p.tiers()


def test_templates_exist() -> None:
    names = {p.name for p in TEMPLATES}
    assert {"us-mqsa-texas.yaml", "uk-nhs-rcr.yaml", "france-csp.yaml", "germany-strlschg.yaml",
            "example-tiering.yaml"} <= names


def test_example_tiering_expires_nothing() -> None:
    path = next(p for p in TEMPLATES if p.name == "example-tiering.yaml")
    p = parse_policy(path.read_text(), known_tiers={"hot", "warm"})
    assert not p.expires and p.may_auto_apply


def test_policies_in_the_docs_parse() -> None:
    import re

    doc = (Path(__file__).resolve().parents[2] / "docs" / "policies.md").read_text()
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", doc, re.S) if b.lstrip().startswith(("name:", "rules:", "protections:"))]
    assert len(blocks) >= 3
    for block in blocks:
        text = block if "rules:" in block else block + "rules: []\n"
        if "enabled: false" in block:
            assert parse_policy(text, known_tiers=TIERS).protections.disabled()
        else:
            parse_policy(text, known_tiers=TIERS)
