"""The HTTP API against its own OpenAPI description, with schemathesis.

Every operation of ``/openapi.json`` is called with generated requests
(valid and invalid), in-process against the ASGI app that ``ilm serve`` runs,
over a real catalog (SQLite, and PostgreSQL unless ILM_TEST_CATALOGS says
otherwise) holding a few real studies and a plan. Each answer must not be a
server error (5xx) and must match the response schema the API declares.

Reproducible and bounded: hypothesis is derandomized (the same examples on
every run) and makes at most MAX_EXAMPLES requests per operation. The app is
built with auth off (every request acts as admin), so generated requests reach
the handlers; tests/test_auth.py covers the tokens and roles of every route.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pydicom
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance
from schemathesis.core.failures import FailureGroup

from conftest import CATALOGS, fresh_catalog, write_config

from ilm.config import load_settings
from ilm.service import ArchiveService
from ilm.web import create_app

# Per operation; PostgreSQL repeats the walk with fewer examples (its own SQL, at half the time).
MAX_EXAMPLES = {"sqlite": 20, "postgresql": 10}

POLICY = """name: schema-test
version: "1"
rules:
  - id: ct-to-warm
    when: {modality: CT}
    action: {transition: warm}
"""


@pytest.fixture(scope="module", params=CATALOGS)
def seeded_service(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArchiveService]:
    """One archive per catalog for the whole module: three studies, a plan, a hold."""
    home = tmp_path_factory.mktemp(f"api-schema-{request.param}")
    for url in fresh_catalog(request.param, home, request):
        write_config(home / "home", url)
        service = ArchiveService.open(load_settings(home=home / "home", env={}))
        try:
            files = Path(pydicom.__file__).parent / "data" / "test_files"
            service.import_paths([files / n for n in ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm")])
            (service.settings.home / "policy.yaml").write_text(POLICY)
            service.plan(service.settings.home / "policy.yaml", as_of=date(2026, 1, 1), by="seed")
            ct = str(pydicom.dcmread(files / "CT_small.dcm", stop_before_pixels=True).StudyInstanceUID)
            service.hold_add("study", ct, "seeded", "seed")
            yield service
        finally:
            for job in service.apply_jobs.all():
                service.apply_jobs.wait(job.plan_id, timeout=60)
            service.close()


def test_no_server_error_and_answers_match_the_schema(seeded_service: ArchiveService) -> None:
    examples = MAX_EXAMPLES["sqlite" if seeded_service.catalog.dialect == "sqlite" else "postgresql"]
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(seeded_service, auth=False))
    failures: dict[str, str] = {}
    operations = 0
    statuses: dict[int, int] = {}
    for result in schema.get_all_operations():
        op = result.ok()
        operations += 1

        @settings(max_examples=examples, derandomize=True, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy())
        def check(case: schemathesis.Case) -> None:
            response = case.call_and_validate(checks=[not_a_server_error, response_schema_conformance])
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        try:
            check()
        except (Exception, FailureGroup) as exc:  # every failing operation is reported, not only the first
            failures[op.label] = str(exc)[:2000]
    assert operations >= 50  # the whole API was walked (DICOMweb, REST, operations)
    assert sum(statuses.values()) >= 5 * operations  # requests were made: answers by status code
    assert {200, 404, 422} <= set(statuses), statuses
    print(f"{seeded_service.catalog.dialect}: {operations} operations, answers by status {sorted(statuses.items())}")
    assert failures == {}, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())


def test_the_checks_can_fail(seeded_service: ArchiveService) -> None:
    """A route that answers 500, and one whose answer breaks its declared schema, are caught."""
    from fastapi.responses import JSONResponse

    app = create_app(seeded_service, auth=False)

    @app.get("/api/broken", response_model=dict[str, int])
    def broken() -> dict[str, int]:
        raise RuntimeError("a bug")

    @app.get("/api/liar", response_model=dict[str, int])
    def liar() -> JSONResponse:
        return JSONResponse({"count": "many"})  # declared: integers

    bad = schemathesis.openapi.from_asgi("/openapi.json", app)
    with pytest.raises((Exception, FailureGroup), match="500|[Ss]erver error|a bug"):
        bad["/api/broken"]["GET"].Case().call_and_validate(checks=[not_a_server_error])
    with pytest.raises(FailureGroup, match="violates schema"):
        bad["/api/liar"]["GET"].Case().call_and_validate(checks=[response_schema_conformance])

