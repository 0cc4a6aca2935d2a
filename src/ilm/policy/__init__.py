"""Lifecycle policies: the language, its parser, pure evaluation and protections.

Rules are read top to bottom and the first rule whose conditions all match decides the action; protections then veto any expiry they cover, whatever the rule order; a study no rule matches stays where it is.

Nothing here does I/O: the catalog adapter builds :class:`StudyFacts` and
:class:`PatientFacts`, the caller reads the policy file and passes its text
to :func:`parse_policy`, and :func:`evaluate` returns a :class:`Decision`.

    facts.py            StudyFacts, PatientFacts, Hold: what evaluation reads
    durations.py        Period: P10Y / 10y, calendar arithmetic
    ages.py             DICOM AS (045Y) parsing
    sizes.py            500MB / 2GiB
    context.py          derived facts for one study (fail closed: Unknown)
    matchers.py         equals / one_of / regex / empty / not on text attributes
    conditions.py       when: attribute, age, size, tier, label conditions
    retention.py        retain: last encounter + N, birth + N, MQSA, max
    protections.py      vetoes on expiry
    rules.py            Rule, Policy, Action
    yamlnodes.py        YAML nodes with line numbers
    errors.py           PolicyIssue (file, line, field), PolicyError
    parse.py            text -> Policy or PolicyError (parse_conditions.py: when/retain)
    evaluate.py         evaluate(), evaluate_all(), Decision
"""

from ilm.policy.conditions import Check, Outcome
from ilm.policy.durations import DurationError, Period, parse_period
from ilm.policy.errors import PolicyError, PolicyIssue
from ilm.policy.evaluate import CONFLICT_RULE, Decision, RuleTrace, evaluate, evaluate_all
from ilm.policy.facts import (
    Hold, HoldScope, PatientFacts, StudyFacts, is_mammography, patient_facts_from_studies, split_multi,
)
from ilm.policy.parse import check_policy, parse_policy
from ilm.policy.protections import ProtectionCheck, ProtectionStatus, Protections, Veto
from ilm.policy.rules import Action, Policy, Rule

__all__ = [
    "Action", "CONFLICT_RULE", "Check", "Decision", "DurationError", "Hold", "HoldScope", "Outcome",
    "PatientFacts", "Period", "Policy", "PolicyError", "PolicyIssue", "ProtectionCheck",
    "ProtectionStatus", "Protections", "Rule", "RuleTrace", "StudyFacts", "Veto", "check_policy",
    "evaluate", "evaluate_all", "is_mammography", "parse_period", "parse_policy",
    "patient_facts_from_studies", "split_multi",
]
