"""The web dashboard, end to end in headless Chromium (Debian's chromium + chromedriver, Selenium).

A real uvicorn serves ``create_app`` with authentication on; the browser signs
in with API tokens of different roles, clicks through every page, makes a
plan, approves and applies it with its confirmation, watches the progress
page until the apply ends, places and releases a hold, and checks what each
page shows against the catalog. A screenshot of each page is saved under
``test-artifacts/dashboard/`` (or $ILM_TEST_ARTIFACTS).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from support.http import serve

from ilm.service import ArchiveService
from ilm.web import create_app

pytestmark = pytest.mark.skipif(not (shutil.which("chromedriver") and Path("/usr/bin/chromium").exists()),
                                reason="needs Debian's chromium and chromium-driver (make test installs them)")

ARTIFACTS = Path(os.environ.get("ILM_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / "test-artifacts"))
POLICY = """
name: dashboard-test
rules:
  - id: old-ct-to-warm
    description: CT older than two years leaves the fast disk.
    when: {modality: CT, current_tier: hot, study_age: {older_than: P2Y}}
    action: {transition: warm}
"""


def _ingest(service: ArchiveService, src: Path, tmp: Path, tag: int, study_date: str, n: int = 2) -> str:
    ds = pydicom.dcmread(src)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.10.{tag}", f"1.2.826.0.1.3680043.10.{tag}.1"
    ds.StudyDate, ds.Modality, ds.PatientID = study_date, "CT", f"DASH{tag}"
    for i in range(n):
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.10.{tag}.1.{i + 1}"
        p = tmp / f"{tag}-{i}.dcm"
        ds.save_as(p)
        assert service.ingest_path(p).status.value == "stored"
    return str(ds.StudyInstanceUID)


@pytest.fixture
def site(service: ArchiveService, pydicom_test_files: Path, tmp_path: Path) -> Iterator[dict[str, Any]]:
    src = pydicom_test_files / "CT_small.dcm"
    old = [_ingest(service, src, tmp_path, 700 + k, "20150301") for k in range(3)]
    new = _ingest(service, src, tmp_path, 710, "20260301")
    (service.settings.home / "dashboard-test.yaml").write_text(POLICY)
    tokens = {role: service.token_create(f"t-{role}", role, expires=None, by="test")[1]
              for role in ("viewer", "operator", "approver")}
    with serve(create_app(service, auth=True)) as url:
        yield {"url": url, "old": old, "new": new, "tokens": tokens}


@pytest.fixture
def browser(request: pytest.FixtureRequest) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        opts.add_argument(a)
    driver = webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver")))
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


def _shot(driver: Any, test: str, name: str) -> None:
    folder = ARTIFACTS / "dashboard" / test
    folder.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(folder / f"{name}.png"))


def _login(driver: Any, url: str, token: str, path: str = "/") -> None:
    driver.get(f"{url}{path}")
    assert "/login" in driver.current_url  # every page needs a token
    driver.find_element("id", "token").send_keys(token)
    driver.find_element("id", "login").click()
    _wait_for(lambda: "/login" not in driver.current_url, "the sign-in to lead on", timeout=30)


def _text(driver: Any, element_id: str) -> str:
    return str(driver.find_element("id", element_id).text)


def _flash(driver: Any) -> str:
    found = driver.find_elements("css selector", ".flash")
    return " ".join(str(f.text) for f in found)


def _wait_for(predicate: Any, what: str, timeout: float = 120.0) -> None:
    from selenium.common.exceptions import WebDriverException

    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except WebDriverException:  # the page changed under us (a navigation, a refresh): look again
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.25)


def test_click_through_plan_approve_apply(site: dict[str, Any], browser: Any, service: ArchiveService,
                                          catalog_url: str) -> None:
    test = f"apply-{catalog_url.split(':')[0]}"
    url = site["url"]
    _login(browser, url, site["tokens"]["approver"], "/")
    assert browser.current_url == f"{url}/"
    assert _text(browser, "total-studies") == "4"
    assert "hot" in _text(browser, "tiers") and browser.find_element("css selector", "#chart-tiers svg")
    _shot(browser, test, "01-overview")

    browser.get(f"{url}/studies?modality=CT")
    rows = browser.find_elements("css selector", "#studies tbody tr")
    assert len(rows) == 4 and all("hot" in r.text for r in rows)
    _shot(browser, test, "02-studies")
    browser.find_element("link text", site["old"][0]).click()
    _wait_for(lambda: site["old"][0] in browser.title, "the study page")
    assert "hot" in _text(browser, "locations")
    _shot(browser, test, "03-study")

    browser.get(f"{url}/plans")
    browser.find_element("css selector", "#policy option[value='dashboard-test.yaml']").click()
    browser.find_element("name", "as_of").send_keys("")
    browser.find_element("id", "make-plan").click()
    _wait_for(lambda: "/plans/p" in browser.current_url, "the new plan's page")
    plan_id = browser.current_url.rsplit("/", 1)[1].split("?")[0]
    per_rule = _text(browser, "per-rule")
    assert "old-ct-to-warm" in per_rule and "warm" in per_rule
    assert "$" in _text(browser, "plan-cost")
    actions = browser.find_elements("css selector", "#actions tbody tr")
    assert sorted(a.text.split()[0] for a in actions) == sorted(site["old"])
    assert all("transition" in a.text and "pending" in a.text for a in actions)
    _shot(browser, test, "04-plan-preview")

    # a wrong confirmation applies nothing
    browser.find_element("id", "confirm").send_keys("not-the-id")
    browser.find_element("id", "apply").click()
    _wait_for(lambda: "type the plan id" in _flash(browser), "the refusal")
    assert service.plan_get(plan_id).state == "planned"  # type: ignore[union-attr]

    browser.find_element("id", "confirm").send_keys(plan_id)
    browser.find_element("id", "apply").click()
    _wait_for(lambda: "Apply done" in browser.page_source, "the apply to finish on the progress page")  # refreshes itself
    _shot(browser, test, "05-plan-applied")
    assert "3 done" in _text(browser, "progress-text")
    plan = service.plan_get(plan_id)
    assert plan is not None and plan.state == "applied" and plan.approved_by == "t-approver"
    for uid in site["old"]:
        assert service.study(uid).summary.tiers == ("warm",)  # type: ignore[union-attr]
    assert service.study(site["new"]).summary.tiers == ("hot",)  # type: ignore[union-attr]

    browser.get(f"{url}/audit")
    assert "intact" in _text(browser, "chain")
    assert "plan.apply" in browser.find_element("css selector", "table.audit").text
    _shot(browser, test, "06-audit")


def test_holds_restores_cost_pages_and_roles(site: dict[str, Any], browser: Any, service: ArchiveService,
                                             catalog_url: str) -> None:
    test = f"holds-{catalog_url.split(':')[0]}"
    url = site["url"]
    _login(browser, url, site["tokens"]["operator"], "/holds")
    assert browser.current_url == f"{url}/holds"
    browser.find_element("id", "target").send_keys(site["new"])
    browser.find_element("id", "reason").send_keys("litigation 2026-17")
    browser.find_element("id", "place-hold").click()
    _wait_for(lambda: "placed" in _flash(browser), "the hold to be placed")
    [hold] = service.holds()
    assert (hold.target, hold.reason, hold.created_by) == (site["new"], "litigation 2026-17", "t-operator")
    assert "litigation 2026-17" in _text(browser, "holds")
    _shot(browser, test, "01-holds")
    browser.find_element("id", f"release-{hold.id}").click()
    _wait_for(lambda: "released" in _flash(browser), "the hold to be released")
    assert service.holds() == []

    browser.get(f"{url}/restores")
    assert "no restore in progress" in _text(browser, "restores")
    assert not browser.find_elements("id", "new-restore")  # recalling needs the approver role
    _shot(browser, test, "02-restores")

    browser.get(f"{url}/cost")
    assert browser.find_elements("css selector", "#scenarios tbody tr")
    _shot(browser, test, "03-cost")

    # an operator sees the plan page but not the apply form
    plan = service.plan(service.settings.home / "dashboard-test.yaml", as_of=service.clock().date(), by="t").plan
    browser.get(f"{url}/plans/{plan.id}")
    assert not browser.find_elements("id", "apply-form")
    _shot(browser, test, "04-plan-operator")


def test_pages_refuse_without_the_role_and_forms_need_their_csrf_token(site: dict[str, Any],
                                                                      service: ArchiveService) -> None:
    url = site["url"]
    html = {"Accept": "text/html,application/xhtml+xml"}
    with httpx.Client(base_url=url, follow_redirects=False, headers=html) as anon:
        r = anon.get("/plans")  # a browser is sent to the sign-in page
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next=/plans")
        assert anon.post("/holds", data={"scope": "study", "target": site["new"], "reason": "x"}).status_code == 303
        r = anon.get("/plans", headers={"Accept": "application/json"})  # a script gets the API's answer
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        bad = anon.post("/login", data={"token": "ilm_nope", "next": "https://evil.example/"})
        assert bad.status_code == 200 and "evil" not in bad.headers.get("location", "")
    with httpx.Client(base_url=url, follow_redirects=False, headers=html,
                      cookies={"ilm_token": site["tokens"]["viewer"]}) as viewer:
        assert viewer.get("/plans").status_code == 200
        r = viewer.post("/holds", data={"scope": "study", "target": site["new"], "reason": "x", "csrf": "x"})
        assert r.status_code == 403
    with httpx.Client(base_url=url, follow_redirects=False, headers=html,
                      cookies={"ilm_token": site["tokens"]["operator"]}) as operator:
        r = operator.post("/holds", data={"scope": "study", "target": site["new"], "reason": "x", "csrf": "forged"})
        assert r.status_code == 403 and "CSRF" in r.text
    with httpx.Client(base_url=url, follow_redirects=False) as login:
        r = login.post("/login", data={"token": site["tokens"]["viewer"], "next": "//evil.example/x"})
        assert r.status_code == 303 and r.headers["location"] == "/"
        assert "httponly" in r.headers["set-cookie"].lower() and "samesite=strict" in r.headers["set-cookie"].lower()
    assert service.holds() == []  # nothing changed
