"""`bookaudit serve` driven in real headless Chromium (Debian's chromium and chromium-driver)."""

from __future__ import annotations

import socket
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from bookaudit.web.serve import check_read_only, reader_dsn
from devstack import StackEnv
from tests.integration.harness import Pipeline, wait_for
from tests.integration.schemas import JOBS, SAMPLE, Key, Schema
from tests.integration.workloads import write_labelled_workload


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in (
        "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--window-size=1400,1000",
        f"--user-data-dir={tempfile.mkdtemp(prefix='bookaudit-chromium-')}",
    ):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    yield driver
    driver.quit()


HOSTILE = "<img src=x onerror=\"document.title='pwned'\"><b>bold</b>"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# A booking whose text carries markup, per schema: (statement, the booking's key).
_HOSTILE_BOOKING: dict[str, tuple[str, Key]] = {
    "sample": (
        "INSERT INTO bookings (id, customer_id, service, address, price) "
        "VALUES (503, %(c)s, %(text)s, 'Dam 3', 10.00)",
        503,
    ),
    "jobs": (
        "INSERT INTO ops.jobs (job_no, client_ref, title, quoted_total) "
        "VALUES ('J-503', %(c)s, %(text)s, 10.00)",
        "J-503",
    ),
}
# A booking's status as written, then once cancelled, per schema.
_STATUSES = {"sample": ("requested", "cancelled"), "jobs": ("open", "void")}

Site = tuple[Pipeline, dict[str, Key], str]


def _serve(stack: StackEnv, schema: Schema) -> Iterator[Site]:
    """One pipeline on `schema` with the labelled workload and its alerts, served by
    `bookaudit serve`."""
    p = Pipeline(stack, schema=schema).create()
    try:
        ids = write_labelled_workload(p.app_dsn, schema)  # as the application: the non-owner role
        statement, hostile = _HOSTILE_BOOKING[schema.name]
        with psycopg.connect(p.app_dsn) as conn:  # markup in an actor and a value stays text
            conn.execute("SELECT bookaudit.set_actor(%s, role => 'x')", (HOSTILE,))
            conn.execute(statement, {"c": ids["customer"], "text": HOSTILE})
        p.flow()
        p.alerts()
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        with p.running("serve", "--port", str(port), stop_timeout=10) as server:

            def up() -> bool:
                try:
                    return bool(urllib.request.urlopen(f"{url}/healthz", timeout=2).read() == b"ok")
                except (urllib.error.URLError, ConnectionError):
                    assert server.poll() is None, p.spawn_log("serve").read_text()
                    return False

            wait_for("bookaudit serve", up, timeout=30)
            yield p, {**ids, "hostile": hostile}, url
    finally:
        p.drop()


@pytest.fixture(scope="module")
def site(stack: StackEnv) -> Iterator[Site]:
    """The sample schema's site, which most page tests share."""
    yield from _serve(stack, SAMPLE)


@pytest.fixture(scope="module")
def jobs_site(stack: StackEnv) -> Iterator[Site]:
    yield from _serve(stack, JOBS)


@pytest.fixture
def schema_site(schema: Schema, request: pytest.FixtureRequest) -> Site:
    """The site on each schema: the sample's is the shared one."""
    found: Site = request.getfixturevalue("site" if schema is SAMPLE else "jobs_site")
    return found


def _texts(driver: WebDriver, css: str) -> list[str]:
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, css)]


def test_booking_page_shows_labels_old_new_filters_and_as_of(
    schema_site: Site, browser: WebDriver, tmp_path: Path
) -> None:
    p, ids, url = schema_site
    price, status = p.schema.names["price"], p.schema.entity_map.booking.fields.status[0]
    written, cancelled = _STATUSES[p.schema.name]
    browser.get(f"{url}/bookings/{ids['main']}?tz=Europe/Amsterdam")
    labels = _texts(browser, "#timeline tr.entry td.label")
    assert labels[:4] == ["Booking created", "Scheduled", "Rescheduled", "Price changed"]
    row = browser.find_elements(By.CSS_SELECTOR, "#timeline tr.entry")[3]
    assert "alice (admin)" in row.text and f"{price}: 149.00 → 189.50" in row.text
    assert "approval APR-1042" in row.text
    reschedule = browser.find_elements(By.CSS_SELECTOR, "#timeline tr.entry")[2].text
    assert "27 Nov 2026 09:00 → 28 Nov 2026 15:00" in reschedule  # shown in the chosen zone

    # Screenshot of the booking page, looked at by a person when it changes.
    shot = tmp_path / "booking.png"
    assert browser.save_screenshot(str(shot))
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000

    # Filters, typed into the form as a person would.
    browser.find_element(By.NAME, "label").send_keys("price")
    browser.find_element(By.ID, "apply").click()
    wait_for("the filtered page", lambda: "label=price" in browser.current_url, timeout=10)
    assert _texts(browser, "#timeline td.label") == ["Price changed", "Price changed"]
    browser.get(f"{url}/bookings/{ids['main']}?actor=olga")
    assert set(_texts(browser, "#timeline td.who")) == {"olga (billing)"}
    browser.get(f"{url}/bookings/999999")
    assert browser.find_element(By.ID, "empty").text == "No entries match."

    # As of the moment after the price change: the booking said 189.50, not yet cancelled.
    with psycopg.connect(p.warehouse_dsn) as wh:
        moments = wh.execute(
            "SELECT committed_at FROM audit.timeline WHERE booking_id = %s "
            "ORDER BY committed_at, commit_lsn, sequence",
            (str(ids["main"]),),
        ).fetchall()
    after_price = moments[3][0].isoformat()
    browser.get(f"{url}/bookings/{ids['main']}")
    browser.find_element(By.ID, "as_of").send_keys(after_price)
    browser.find_element(By.ID, "show-as-of").click()
    wait_for("the as-of page", lambda: "as_of=" in browser.current_url, timeout=10)
    values = dict(
        zip(_texts(browser, "#as-of td.field"), _texts(browser, "#as-of td.value"), strict=True)
    )
    assert values[price] == "189.50" and values[status] == written

    # Diff between then and the end, with who changed what.
    browser.get(f"{url}/bookings/{ids['main']}")
    browser.find_element(By.ID, "t1").send_keys(after_price)
    browser.find_element(By.ID, "t2").send_keys(moments[-1][0].isoformat())
    browser.find_element(By.ID, "show-diff").click()
    wait_for("the diff page", lambda: "t1=" in browser.current_url, timeout=10)
    diff = browser.find_element(By.ID, "diff").text
    assert f"{status} {written} {cancelled} dana" in diff
    assert f"{price} 189.50 99.00 {p.app_role} (db role via psql)" in diff


def test_csv_print_and_evidence(site: Site, browser: WebDriver) -> None:
    p, ids, url = site
    browser.get(f"{url}/bookings/{ids['main']}?label=price")
    csv_href = browser.find_element(By.ID, "csv").get_attribute("href")
    assert csv_href is not None and "label=price" in csv_href
    csv_text = urllib.request.urlopen(csv_href, timeout=10).read().decode()
    lines = csv_text.splitlines()
    assert lines[0].startswith("committed_at,actor,actor_role,action,table,field,old,new,txid,")
    assert len(lines) == 3 and all("Price changed" in x for x in lines[1:])

    browser.find_element(By.ID, "print").click()
    wait_for("the print view", lambda: "print=1" in browser.current_url, timeout=10)
    assert "print" in (browser.find_element(By.TAG_NAME, "body").get_attribute("class") or "")
    assert not browser.find_element(By.CSS_SELECTOR, "form.filters").is_displayed()

    browser.get(f"{url}/bookings/{ids['main']}/evidence")
    verify = p.cli("warehouse", "verify").stdout
    head = browser.find_element(By.ID, "head-hash").text
    assert f"head {head}" in verify
    positions = _texts(browser, "#evidence td.position")
    assert positions and all(x.isdigit() for x in positions)
    leaves = _texts(browser, "#evidence code.leaf")
    with psycopg.connect(p.warehouse_dsn) as wh:
        stored = wh.execute(
            "SELECT position, encode(leaf, 'hex') FROM audit.chain WHERE change_id IN "
            "(SELECT change_id FROM audit.timeline WHERE booking_id = %s) ORDER BY change_id",
            (str(ids["main"]),),
        ).fetchall()
    assert sorted(zip(map(int, positions), leaves, strict=True)) == sorted(stored)
    assert len(_texts(browser, "#evidence tr.entry")) == 15


def test_customer_log_actor_and_alerts_pages(site: Site, browser: WebDriver) -> None:
    _, ids, url = site
    browser.get(f"{url}/customers/{ids['customer']}")
    assert "Deleted" in _texts(browser, "#timeline td.label")
    browser.get(f"{url}/log")
    counts = browser.find_element(By.ID, "counts").text.splitlines()
    # booking, created, existing at install, entries, reschedules, cancellations, price, status
    assert f"{ids['main']} 1 0 15 1 1 2 2" in counts
    assert "dana" in browser.find_element(By.ID, "totals").text
    browser.get(f"{url}/log?since=2000-01-01&until=2000-01-02")
    assert browser.find_element(By.ID, "empty").text.startswith("No booking created or modified")
    browser.get(f"{url}/actors/olga")
    assert _texts(browser, "#timeline td.label") == [
        "Invoice created", "Invoice sent", "Payment recorded", "Refund recorded",
    ]  # fmt: skip
    browser.get(f"{url}/alerts")
    alerts = browser.find_element(By.ID, "alerts").text
    assert "price-by-unauthorised-role" in alerts and site[0].app_role in alerts
    browser.find_element(By.NAME, "rule").send_keys("price-change-after-invoice-sent")
    browser.find_element(By.ID, "apply").click()
    wait_for("the filtered alerts", lambda: "rule=" in browser.current_url, timeout=10)
    rules = {
        r.find_elements(By.TAG_NAME, "td")[2].text
        for r in browser.find_elements(By.CSS_SELECTOR, "tr.alert")
    }
    assert rules == {"price-change-after-invoice-sent"}
    browser.get(f"{url}/bookings/{ids['main']}?since=not-a-date")
    assert "is not a date" in browser.find_element(By.ID, "error").text


def test_pages_read_through_a_role_that_cannot_write(
    site: Site,
) -> None:
    p, _, _ = site
    dsn = reader_dsn(p.warehouse_dsn)
    check_read_only(dsn)
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("bookaudit_reader",)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("CREATE TABLE audit.x (i int)")
    with psycopg.connect(dsn) as conn:
        conn.execute("SET TRANSACTION READ WRITE")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(
                "INSERT INTO audit.dead_letters (kafka_topic, kafka_partition, kafka_offset, error) VALUES ('t', 0, 0, 'x')"
            )


def test_serve_refuses_other_addresses_without_credentials(
    site: Site,
) -> None:
    p, _, _ = site
    refused = p.cli("serve", "--host", "0.0.0.0", "--port", str(_free_port()), check=False)
    assert refused.returncode == 2 and "refusing to listen on 0.0.0.0" in refused.stderr
    assert refused.stderr.count("\n") == 1


def test_markup_in_values_is_shown_as_text(site: Site, browser: WebDriver) -> None:
    _, ids, url = site
    browser.get(f"{url}/bookings/{ids['hostile']}")
    assert browser.title != "pwned"
    assert browser.find_elements(By.CSS_SELECTOR, "#timeline img, #timeline b") == []
    assert HOSTILE in browser.find_element(By.CSS_SELECTOR, "#timeline td.who").text
    assert HOSTILE in browser.find_element(By.CSS_SELECTOR, "#timeline td.changes").text
