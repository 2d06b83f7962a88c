"""The review page in a real browser (Debian's headless chromium driven by selenium) against a real gateway
process on the session stack: sightings created and uploaded through the gateway, identifications and
embeddings stored the way the matcher stores them, a gallery version published to the model store.

The researcher opens the queue (most uncertain first), confirms the top match with the keyboard, is stopped by
the duplicate guard when asking for a new individual while a known one scores above the threshold (cancels,
then creates it anyway), confirms the next sighting into that new individual through "another individual", rejects the last one;
the test checks Redis, the audit trail and the screenshots it saves (tmp dir + /tmp/review-screenshots/).
Then the researcher opens "Similar individuals" (two catalogued individuals with near-identical photos), merges one
into the other on its page (confirm dialog), the test runs the re-index and checks the alias, the merge log and the
next gallery version; undoing it on the page restores both ids in the version after.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import shutil
import time
import uuid
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import requests

from services.chain.results import store_embedding, store_identification
from services.core import keys, topics
from services.core.identification import Tuning, build_gallery
from services.curation.operations.confirmations import ConfirmationService, audit_trail, stored_confirmation
from services.curation.operations.gallery_versions import GalleryStore
from services.curation.operations.identities import (
    ORIGINAL_KEY,
    IdentityService,
    ServedSimilarities,
    read_aliases,
)
from services.curation.operations.known import CurrentGalleryIndividuals
from services.curation.operations.publish import publish_gallery
from services.curation.operations.reindex import reindex
from support.front import (
    RESEARCHER_TOKEN,
    TOKEN,
    create_sighting,
    front_settings,
    redis_of,
    start_gateway,
    upload,
)
from support.operations import Clusters

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
needs_chromium = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER and importlib.util.find_spec("selenium")),
    reason="needs Debian's chromium + chromium-driver (scripts/install-system-deps.sh) and selenium (pip install -e '.[dev]')")

SCREENSHOTS = Path("/tmp/review-screenshots")
# the session's Redis is shared by every test module (confirmations:index, new ids): this module's own names
TAG = f"rv{uuid.uuid4().hex[:6]}"
I0, I1, I2 = INDIVIDUALS = [f"{TAG}-ind-{n}" for n in range(3)]
D0, D1 = TWINS = [f"{TAG}-dup-{n}" for n in "ab"]  # catalogued twice: D1's photos are of D0 (too similar)
THRESHOLD = 0.5
WAIT_S = 20
# (top-5 candidates as the matcher ranks them, new_individual at the threshold); margins 0.02, 0.12, 0.45, 0.49
SEEDS = {
    "uncertain": [(I1, 0.55), (I0, 0.53), ("new_individual", THRESHOLD), (I2, 0.20)],
    "guarded": [(I0, 0.62), ("new_individual", THRESHOLD), (I1, 0.40), (I2, 0.30)],
    "clear": [(I2, 0.95), ("new_individual", THRESHOLD), (I0, 0.31), (I1, 0.22)],
    "wrong": [(I1, 0.99), ("new_individual", THRESHOLD), (I0, 0.30), (I2, 0.10)],
}
CROP = [260.0, 120.0, 560.0, 380.0]


def _photo(seed: int) -> bytes:
    """A small JPEG: a sea gradient with a dark dorsal fin inside CROP."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (800, 500))
    draw = ImageDraw.Draw(image)
    for y in range(500):
        draw.line([(0, y), (800, y)], fill=(30 + y // 8, 80 + y // 6, 140 + y // 5))
    x = 300 + 40 * seed
    draw.polygon([(x, 360), (x + 90, 150 + 20 * seed), (x + 200, 360)], fill=(35, 35, 40))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    return out.getvalue()


def _uploaded(url: str, observer: str, n: int, **overrides) -> str:
    photo = _photo(n)
    created = create_sighting(url, observer=observer, size=len(photo), **overrides)
    assert upload(created, photo).status_code == 200
    return created["sighting_id"]


def _publish(settings, reference: str, tmp: Path) -> str:
    """A gallery version of INDIVIDUALS (3 rows each) where one row of ind-0 is the confirmed sighting
    `reference` (as `whaleid reindex` adds it): the page shows that photo beside ind-0."""
    clusters = Clusters()
    rows = [(ind, clusters.sample(D0 if ind == D1 else ind)) for ind in INDIVIDUALS + TWINS for _ in range(3)]
    images = [f"train-{n}.jpg" for n in range(len(rows))]
    images[2] = f"sighting/{reference}"
    gallery = build_gallery(np.stack([v for _, v in rows]), [i for i, _ in rows], ["humpback_whale"] * len(rows),
                            images)
    tuning = Tuning(threshold=THRESHOLD).save(tmp / "tuning.json")
    return publish_gallery(GalleryStore.from_settings(settings), gallery, tuning, reason="review test gallery")


def _seed(settings, url: str, observer: str, n: int, candidates, version: str, **overrides) -> str:
    sid = _uploaded(url, observer, n, crop_box=CROP if n != 2 else None, species_hint="humpback_whale",
                    taken_at=f"2026-11-2{n}T08:30:00+00:00", **overrides)
    client = redis_of(settings)
    store_embedding(client, topics.SightingEmbedded(
        sighting_id=sid, embedding=[0.1] * 8, model_version="toy", crop_box=CROP, crop_source="uploader",
        uploaded_at=time.time(), embedded_at=time.time()))
    store_identification(client, topics.Identification(
        sighting_id=sid, candidates=[{"individual_id": i, "score": s} for i, s in candidates],
        new_individual=candidates[0][0] == "new_individual", model_version="toy", gallery_version=version,
        uploaded_at=time.time(), identified_at=time.time(), species="humpback_whale", species_source="app",
        threshold=THRESHOLD))
    return sid


@pytest.fixture(scope="module")
def review(stack, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("review")
    settings = front_settings(stack).with_overrides(gallery_prefix=f"galleries-review-{uuid.uuid4().hex[:6]}")
    exits = {}
    with contextlib.ExitStack() as cleanup:
        gateway, url = start_gateway(settings, run_dir, gallery_prefix=settings.gallery_prefix)
        cleanup.callback(lambda: exits.setdefault("gateway", gateway.stop()))
        observer = f"review-{uuid.uuid4().hex[:8]}"  # the queue is filtered to this test's sightings
        reference = _uploaded(url, "catalogue", 3)
        version = _publish(settings, reference, run_dir)
        ids = {name: _seed(settings, url, observer, n, cands, version) for n, (name, cands) in enumerate(SEEDS.items())}
        yield {"settings": settings, "url": url, "observer": observer, "ids": ids, "gateway": gateway,
               "clusters": Clusters(seed=11)}
    assert exits == {"gateway": 0}, gateway.log_text()


@pytest.fixture()
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1500,950"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver, predicate, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S, poll_frequency=0.05).until(lambda d: predicate(d), message=what)


def _shown(driver, sighting_id: str) -> None:
    """Wait until `sighting_id` is on screen, ready, with its photo decoded."""
    _wait(driver, lambda d: d.execute_script(
        "const img = document.getElementById('photo');"
        "return document.body.dataset.state === 'ready' && "
        "document.getElementById('review').dataset.sightingId === arguments[0] && img.complete && "
        "img.naturalWidth > 0;", sighting_id), f"sighting {sighting_id} shown with its photo")


def _press(driver, key: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(key).perform()


def _screenshot(driver, tmp_path: Path, name: str, element=None) -> Path:
    path = tmp_path / name
    if element is None:
        driver.save_screenshot(str(path))
    else:
        element.screenshot(str(path))
    assert path.stat().st_size > 10_000
    return path


def _accepted(client, sighting_id: str) -> list[dict]:
    return [e for e in audit_trail(client, sighting_id) if e["outcome"] == "accepted"]


def test_the_page_is_public_and_locked_down_and_the_queue_api_filters(review):
    url, settings = review["url"], review["settings"]
    page = requests.get(f"{url}/review", timeout=10)  # no credential: the page holds no data
    assert page.status_code == 200 and "duplicate-guard" in page.text
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and settings.s3_endpoint in csp
    assert requests.get(f"{url}/v1/review/queue", headers={"Authorization": f"Bearer {TOKEN}"},
                        timeout=10).status_code == 403  # apps may not review

    observer = f"filters-{uuid.uuid4().hex[:8]}"
    far = _seed(settings, url, observer, 0, SEEDS["clear"], "v", latitude=60.0, longitude=5.0)
    near = _seed(settings, url, observer, 1, SEEDS["uncertain"], "v")

    document = requests.get(f"{url}/openapi.json", timeout=10).json()
    schema = jsonschema.Draft202012Validator({"$ref": "#/components/schemas/ReviewQueue",
                                              "components": document["components"]})

    def queue(**params):
        answer = requests.get(f"{url}/v1/review/queue", params={"observer": observer.upper(), **params},
                              headers={"Authorization": f"Bearer {RESEARCHER_TOKEN}"}, timeout=10)
        assert answer.status_code == 200, answer.text
        schema.validate(answer.json())
        return [item["sighting_id"] for item in answer.json()["items"]]

    assert queue() == [near, far]  # margin 0.02 before 0.45; the observer matches case-insensitively
    assert queue(near="-33.9,18.4", radius_km="10") == [near]
    assert queue(since="2026-11-21") == [near] and queue(until="2026-11-20") == [far]
    assert queue(species="orca") == [] and queue(species="humpback_whale", limit="1") == [near]
    for bad in ({"near": "north"}, {"near": "nan,1"}, {"near": "1,2", "radius_km": "-1"}, {"since": "May"},
                {"limit": "0"}):
        assert requests.get(f"{url}/v1/review/queue", params=bad, timeout=10,
                            headers={"Authorization": f"Bearer {RESEARCHER_TOKEN}"}).status_code == 400, bad
    found = requests.get(f"{url}/v1/individuals", params={"q": f"{TAG}-IND-".upper()}, timeout=10,
                         headers={"Authorization": f"Bearer {RESEARCHER_TOKEN}"}).json()
    assert found["individuals"] == INDIVIDUALS
    headers = {"Authorization": f"Bearer {RESEARCHER_TOKEN}"}
    one = requests.get(f"{url}/v1/individuals/{I0}", headers=headers, timeout=10).json()
    assert one["in_gallery"] and len(one["gallery_photos"]) == 1 and one["sightings"] == []
    assert requests.get(f"{url}/v1/individuals/nobody", headers=headers, timeout=10).status_code == 404
    assert requests.get(f"{url}/v1/individuals/{I0}", headers={"Authorization": f"Bearer {TOKEN}"},
                        timeout=10).status_code == 403


@needs_chromium
def test_review_queue_confirm_and_duplicate_guard(review, browser, tmp_path):
    from selenium.webdriver.common.by import By

    url, ids, client = review["url"], review["ids"], redis_of(review["settings"])
    browser.get(f"{url}/review?observer={review['observer']}#token={RESEARCHER_TOKEN}")

    # the queue, most uncertain first; the token left the address bar
    _shown(browser, ids["uncertain"])
    assert "token" not in browser.current_url
    # one atomic read of the DOM (a background refill may re-render the queue list meanwhile)
    queue, rows = browser.execute_script(
        "return [Array.from(document.querySelectorAll('#upcoming li'), li => li.dataset.sightingId),"
        " Array.from(document.querySelectorAll('#candidates tbody tr'), tr => [tr.dataset.individualId, tr.className])];")
    assert queue == [ids["uncertain"], ids["guarded"], ids["clear"], ids["wrong"]]
    assert [r[0] for r in rows] == [c for c, _ in SEEDS["uncertain"]]
    assert "new-individual" in rows[2][1] and "selected" in rows[0][1]
    assert browser.find_element(By.ID, "crop").is_displayed()
    _screenshot(browser, tmp_path, "queue.png")

    # confirm the top match with the keyboard; the next item is on screen at once
    _press(browser, "c")
    _shown(browser, ids["guarded"])
    conf = stored_confirmation(client, ids["uncertain"])
    assert (conf.action, conf.individual_id, conf.researcher) == ("confirm", I1, "dr-fluke")
    assert f"Confirmed {I1}" in browser.find_element(By.ID, "status").text
    _wait(browser, lambda d: d.find_element(By.ID, "crop").is_displayed(), "crop box drawn")
    _wait(browser, lambda d: d.execute_script(
        "const r = document.getElementById('reference-photo'); return !r.hidden && r.complete && r.naturalWidth > 0;"),
        "the reference photo of the top candidate is shown")
    assert f"reference of {I0}" in browser.find_element(By.ID, "reference-caption").text
    _screenshot(browser, tmp_path, "comparison.png", browser.find_element(By.ID, "review"))

    # the duplicate guard: ind-0 scores 0.62 > 0.5; cancel creates nothing
    guard = browser.find_element(By.ID, "duplicate-guard")
    browser.find_element(By.ID, "new").click()
    _wait(browser, lambda d: guard.get_attribute("open") is not None, "the duplicate guard opens")
    assert f"{I0} scores 0.620" in guard.text and "0.500" in guard.text
    _screenshot(browser, tmp_path, "guard.png")
    browser.find_element(By.ID, "guard-cancel").click()
    _wait(browser, lambda d: guard.get_attribute("open") is None, "the guard closes")
    assert stored_confirmation(client, ids["guarded"]) is None
    assert browser.find_element(By.ID, "review").get_attribute("data-sighting-id") == ids["guarded"]

    # ... and "create anyway" does (keyboard: n)
    _press(browser, "n")
    _wait(browser, lambda d: guard.get_attribute("open") is not None, "the duplicate guard opens again")
    browser.find_element(By.ID, "guard-create").click()
    _shown(browser, ids["clear"])
    created = stored_confirmation(client, ids["guarded"])
    assert created.action == "new" and created.individual_id.startswith("whale-")
    assert client.sismember(keys.CONFIRMATIONS_NEW_IDS_KEY, created.individual_id)

    # "another individual": search by id, confirm the last sighting into the new individual
    _press(browser, "a")
    field = browser.find_element(By.ID, "another-id")
    field.send_keys(created.individual_id[:9])
    _wait(browser, lambda d: created.individual_id in [o.get_attribute("value") for o in
                                                       d.find_elements(By.CSS_SELECTOR, "#individual-ids option")],
          "the search offers the new individual")
    field.clear()
    field.send_keys(created.individual_id)
    browser.find_element(By.ID, "another-go").click()
    _shown(browser, ids["wrong"])
    last = stored_confirmation(client, ids["clear"])
    assert (last.action, last.individual_id) == ("confirm", created.individual_id)

    # the individual's page (keyboard: i): ind-1 holds the sighting confirmed above, with its photo and position
    _press(browser, "i")
    dialog = browser.find_element(By.ID, "individual")
    _wait(browser, lambda d: dialog.get_attribute("open") is not None, "the individual's page opens")
    timeline = browser.execute_script(
        "return Array.from(document.querySelectorAll('#individual-timeline li'), li => [li.dataset.sightingId,"
        " li.textContent, li.querySelector('img') !== null]);")
    assert [(sid, has_photo) for sid, _, has_photo in timeline] == [(ids["uncertain"], True)]
    assert "-33.9, 18.4" in timeline[0][1] and "confirm by dr-fluke" in timeline[0][1]
    assert "in gallery" in browser.find_element(By.ID, "individual-title").text
    assert browser.find_elements(By.CSS_SELECTOR, "#individual-map circle")
    _wait(browser, lambda d: d.execute_script(
        "return Array.from(document.querySelectorAll('#individual img')).every(i => i.complete && i.naturalWidth > 0);"),
        "the individual's photos load")
    _screenshot(browser, tmp_path, "individual.png")
    browser.find_element(By.ID, "individual-close").click()
    _wait(browser, lambda d: dialog.get_attribute("open") is None, "the individual's page closes")

    # reject the top candidate (keyboard: r); the queue is then empty
    _press(browser, "r")
    _wait(browser, lambda d: d.find_element(By.ID, "empty").is_displayed(), "the queue is empty")
    rejected = stored_confirmation(client, ids["wrong"])
    assert (rejected.action, rejected.individual_id) == ("reject", I1)

    # the audit trail: exactly one accepted decision each, by the signed-in researcher
    for name, action in (("uncertain", "confirm"), ("guarded", "new"), ("clear", "confirm"), ("wrong", "reject")):
        entries = _accepted(client, ids[name])
        assert [(e["action"], e["researcher"]) for e in entries] == [(action, "dr-fluke")], entries
    answer = requests.get(f"{url}/v1/review/queue", params={"observer": review["observer"]},
                          headers={"Authorization": f"Bearer {RESEARCHER_TOKEN}"}, timeout=10).json()
    assert answer == {"items": [], "total": 0}

    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and "favicon" not in e["message"]]
    assert not severe, severe  # no CSP violation, no script error
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for name in ("queue.png", "comparison.png"):
        shutil.copy(tmp_path / name, SCREENSHOTS / name)


def _labels(store, version) -> dict[str, tuple[str, str]]:
    """Gallery rows of one version: image -> (individual_id, original id or '')."""
    lines = store._get_bytes(store._key(version, "entries.jsonl")).decode().splitlines()
    return {e["image"]: (e["individual_id"], e["metadata"].get(ORIGINAL_KEY, ""))
            for e in map(json.loads, filter(None, lines))}


@needs_chromium
def test_merge_two_individuals_on_the_page_then_reindex(review, browser, tmp_path):
    from selenium.webdriver.common.by import By

    url, settings = review["url"], review["settings"]
    client, store = redis_of(settings), GalleryStore.from_settings(settings)
    # a past decision naming D1: a confirmed sighting of it, with an embedding the gallery takes
    sid = _uploaded(url, review["observer"] + "-twin", 4, crop_box=CROP, taken_at="2026-11-25T09:00:00+00:00")
    store_embedding(client, topics.SightingEmbedded(
        sighting_id=sid, embedding=[float(x) for x in review["clusters"].sample(D1)], model_version="toy",
        crop_box=CROP, crop_source="uploader", uploaded_at=time.time(), embedded_at=time.time()))
    ConfirmationService(client, CurrentGalleryIndividuals(store)).submit(
        sid, {"action": "confirm", "individual_id": D1, "researcher": "dr-fluke"})

    browser.get(f"{url}/review?observer={review['observer']}#token={RESEARCHER_TOKEN}")
    _wait(browser, lambda d: d.execute_script("return document.body.dataset.state") in ("ready", "empty"),
          "the page is signed in")
    # "Similar individuals": the twins are listed; open D1's page from there
    browser.find_element(By.ID, "similar-open").click()
    similar = browser.find_element(By.ID, "similar")
    _wait(browser, lambda d: similar.get_attribute("open") is not None, "the similar individuals open")
    pairs = browser.execute_script(
        "return Array.from(document.querySelectorAll('#similar-pairs tbody tr'), tr => tr.dataset.pair);")
    assert f"{D0} {D1}" in pairs and not [p for p in pairs if I0 in p or I1 in p]
    browser.find_element(By.CSS_SELECTOR, f"#similar-pairs button[data-individual-id='{D1}']").click()
    def page_of(individual_id):
        _wait(browser, lambda d: d.execute_script(
            "const p = document.getElementById('individual'); return p.open && p.dataset.state === 'ready' && "
            "p.dataset.individualId === arguments[0];", individual_id), f"the page of {individual_id}")

    page_of(D1)
    assert similar.get_attribute("open") is None
    assert browser.find_element(By.CSS_SELECTOR, f"#individual-timeline li[data-sighting-id='{sid}']")

    # merge D1 into D0: search the target, confirm in the dialog
    field = browser.find_element(By.ID, "merge-target")
    field.send_keys(f"{TAG}-dup")
    _wait(browser, lambda d: d.execute_script(
        "return Array.from(document.querySelectorAll('#merge-ids option'), o => o.value);") == [D0],
        "the search offers the other twin only")
    field.clear()
    field.send_keys(D0)
    browser.find_element(By.ID, "merge-go").click()
    ask = browser.find_element(By.ID, "merge-confirm")
    _wait(browser, lambda d: ask.get_attribute("open") is not None, "the merge asks first")
    assert f"Merge {D1} into {D0}?" in ask.text and "1 confirmed sighting" in ask.text and "undone" in ask.text
    _screenshot(browser, tmp_path, "merge-confirm.png")
    browser.find_element(By.ID, "merge-yes").click()
    page_of(D0)  # the survivor's page, with D1's decision and the merge (undoable)
    timeline = browser.find_element(By.CSS_SELECTOR, f"#individual-timeline li[data-sighting-id='{sid}']").text
    assert f"(recorded as {D1})" in timeline and D1 in browser.find_element(By.ID, "individual-aliases").text
    merge_li = browser.find_element(By.CSS_SELECTOR, "#individual-merges li[data-merge-id]")
    assert f"merge {D1} \u2192 {D0} by dr-fluke" in merge_li.text and merge_li.find_element(By.CSS_SELECTOR, "button.undo")
    assert "Merged" in browser.find_element(By.ID, "curation-status").text
    _wait(browser, lambda d: d.execute_script(
        "return Array.from(document.querySelectorAll('#individual img')).every(i => i.complete && i.naturalWidth > 0);"),
        "the individual's photos load")
    _screenshot(browser, tmp_path, "individual-merged.png")

    # Redis: the alias, the operation with who and when, the log; the past decision itself is untouched
    identities = IdentityService(client, CurrentGalleryIndividuals(store))
    assert read_aliases(client).get(D1) == D0
    [op] = identities.operations(D0)
    assert (op.kind, op.source, op.target, op.researcher, op.undone) == ("merge", D1, D0, "dr-fluke", False)
    assert [(e["event"], e["outcome"], e["researcher"]) for e in identities.log_entries()
            if e["merge_id"] == op.merge_id] == [("merge", "accepted", "dr-fluke")]
    assert stored_confirmation(client, sid).individual_id == D1
    assert [(e["action"], e["individual_id"]) for e in _accepted(client, sid)] == [("confirm", D1)]
    headers = {"Authorization": f"Bearer {RESEARCHER_TOKEN}"}
    assert requests.get(f"{url}/v1/individuals/{D1}", headers=headers, timeout=10).json()["individual_id"] == D0

    # the next gallery version (whaleid reindex): D1's catalogue rows and its confirmed sighting are D0's
    report = reindex(store, client)
    labels = _labels(store, report.new_version)
    assert sid in report.added and report.relabelled.get(f"{D1} -> {D0}") == 3
    assert labels[f"sighting/{sid}"] == (D0, D1) and D1 not in store.individuals(report.new_version)
    assert list(labels.values()).count((D0, D1)) == 4  # 3 catalogue rows + the confirmed sighting
    _, _, pairs = ServedSimilarities(store, client)()
    assert not [p for p in pairs if D1 in (p["a"], p["b"]) or D0 in (p["a"], p["b"])]

    # undo on the page: both ids are back, and in the version after the next re-index
    merge_li.find_element(By.CSS_SELECTOR, "button.undo").click()
    _wait(browser, lambda d: d.execute_script(  # one atomic read: the list is re-rendered meanwhile
        "const li = document.querySelector(`#individual-merges li[data-merge-id='${arguments[0]}']`);"
        "return li !== null && li.classList.contains('undone') && "
        "document.getElementById('individual').dataset.state === 'ready';", op.merge_id),
        "the merge is shown undone")
    assert D1 not in read_aliases(client) and identities.operations(D0)[0].undone_by == "dr-fluke"
    labels = _labels(store, reindex(store, client).new_version)
    assert labels[f"sighting/{sid}"] == (D1, "") and list(labels.values()).count((D1, "")) == 4

    # rename: a name that exists (in another spelling) is refused with the reason; nothing changes
    browser.find_element(By.ID, "rename-id").send_keys(I0.upper())
    browser.find_element(By.ID, "rename-go").click()
    _wait(browser, lambda d: "Rename refused (name_taken)" in d.find_element(By.ID, "curation-status").text,
          "the rename is refused")
    assert I0 in browser.find_element(By.ID, "curation-status").text and D0 not in read_aliases(client)

    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and "favicon" not in e["message"]]
    assert not [e for e in severe if "409" not in e["message"]], severe  # the refused rename's 409 is expected
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for name in ("merge-confirm.png", "individual-merged.png"):
        shutil.copy(tmp_path / name, SCREENSHOTS / name)


@needs_chromium
def test_an_encounter_is_one_item_and_one_decision_covers_its_photos(review, browser, tmp_path):
    """Two photos of one encounter: one queue item with the pooled candidates and both photos; `c` confirms the
    pooled top match for each photo."""

    settings, url, client = review["settings"], review["url"], redis_of(review["settings"])
    observer, encounter = f"enc-{uuid.uuid4().hex[:8]}", f"dive-{uuid.uuid4().hex[:6]}"
    version = CurrentGalleryIndividuals(GalleryStore.from_settings(settings))().version
    first = _seed(settings, url, observer, 0, [(I1, 0.57), (I0, 0.54), ("new_individual", THRESHOLD), (I2, 0.2)],
                  version, encounter=encounter)
    second = _seed(settings, url, observer, 1, [(I0, 0.66), ("new_individual", THRESHOLD), (I1, 0.45), (I2, 0.3)],
                   version, encounter=encounter)
    browser.get(f"{url}/review?observer={observer}#token={RESEARCHER_TOKEN}")
    _wait(browser, lambda d: d.execute_script("return document.body.dataset.state") == "ready", "the item is shown")
    shown, queue, rows, facts, strip = browser.execute_script(
        "return [document.getElementById('review').dataset.sightingId,"
        " Array.from(document.querySelectorAll('#upcoming li'), li => li.dataset.sightingId),"
        " Array.from(document.querySelectorAll('#candidates tbody tr'), tr => tr.dataset.individualId),"
        " document.getElementById('facts').textContent,"
        " Array.from(document.querySelectorAll('#encounter-photos img'), img => img.alt)];")
    assert shown == first and queue == [first]  # the more uncertain photo stands for the encounter
    assert rows[:3] == [I0, I1, "new_individual"]  # pooled: I0 0.66 (second photo), I1 0.57 (first)
    assert encounter in facts and "2 photo(s)" in facts
    assert strip == [f"encounter photo {second}"]
    _screenshot(browser, tmp_path, "encounter.png")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(tmp_path / "encounter.png", SCREENSHOTS / "encounter.png")
    _press(browser, "c")
    _wait(browser, lambda d: stored_confirmation(client, second) is not None, "both photos decided")
    assert [(c.action, c.individual_id) for c in (stored_confirmation(client, first),
                                                  stored_confirmation(client, second))] == [("confirm", I0)] * 2
    assert len(_accepted(client, first)) == len(_accepted(client, second)) == 1


def test_an_app_token_cannot_review(review, browser):
    from selenium.webdriver.common.by import By

    browser.get(f"{review['url']}/review#token={TOKEN}")
    _wait(browser, lambda d: d.execute_script("return document.body.dataset.state") == "signed-out",
          "signed out")
    assert "Sign-in refused" in browser.find_element(By.ID, "status").text
    assert browser.find_element(By.ID, "sign-in").is_displayed()
    assert browser.execute_script("return sessionStorage.getItem('whaleid-review-token')") is None
