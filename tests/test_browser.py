"""The feature browser on the tiny run, with an identity SAE (feature f *is* neuron f) and a
"doubled" SAE (features 2f and 2f+1 both read neuron f) linked to it as a split family: the JSON
API's numbers, its 4xx answers to bad input, live text and steering against the LM run directly,
the static export, and the pages rendered in a real Chromium (skipped only when none is installed).
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import uvicorn
from fastapi.testclient import TestClient

from monosemantic.activations import ActivationStore
from monosemantic.analysis.analyze import AnalysisConfig, analyze_run
from monosemantic.analysis.store import FILENAME, FeatureStore
from monosemantic.browser.app import create_app
from monosemantic.browser.export import export_site
from monosemantic.corpus.tokenizer import eos_id, load_tokenizer
from monosemantic.errors import UserError
from monosemantic.interventions.steer import next_token_change, steering_hook
from monosemantic.lm.model import load_lm
from monosemantic.pipeline import RunDir
from monosemantic.progress import set_quiet
from monosemantic.sae.build import build_sae
from monosemantic.sae.config import SAEConfig
from monosemantic.sae.io import load_sae, save_sae

HOOK = "blocks.0.mlp.hook_post"
CFG = AnalysisConfig(
    top_k=6,
    per_interval=2,
    n_quantile_intervals=3,
    n_random=4,
    n_scored_units=16,
    context_left=4,
    context_right=2,
    n_logits=3,
    n_neighbours=3,
    n_constituents=3,
)
CHROMIUM, CHROMEDRIVER = (
    shutil.which("chromium") or "/usr/bin/chromium",
    shutil.which("chromedriver") or "/usr/bin/chromedriver",
)


def _sae(d: int, copies: int):
    """An SAE whose feature j reads neuron j // copies: encode(x)[j] = x[j // copies] for x ≥ 0."""
    cfg = SAEConfig(d_in=d, d_sae=d * copies, n_samples=1)
    sae = build_sae(cfg)
    pick_DF = torch.eye(d).repeat_interleave(copies, dim=1)
    with torch.no_grad():
        sae.W_enc.copy_(pick_DF), sae.W_dec.copy_(pick_DF.T / copies)
        sae.b_enc.zero_(), sae.b_dec.zero_()
    return sae, cfg


def _png(width: int, height: int) -> bytes:
    """A valid grey RGB PNG of the given size."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\x80" * 3 * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def run(tiny_run, tmp_path_factory) -> Path:
    set_quiet(True)
    run = tmp_path_factory.mktemp("browser") / "run"
    shutil.copytree(tiny_run, run)
    d = ActivationStore(run / "activations" / "val").d_in
    names = [f"identity-{d}", f"doubled-{2 * d}"]
    for name, copies in zip(names, (1, 2)):
        save_sae(*_sae(d, copies), run / "saes" / name)
    analyze_run(run, names, CFG)
    (run / "splitting").mkdir()
    (run / "splitting" / "families.json").write_text(
        json.dumps(
            {
                "features": {
                    name: {
                        "label": [f"{name}#{f}" for f in range(n)],
                        "sources": [[["bible" if f % 2 else "python-docs", 0.9]] for f in range(n)],
                        "after": [[[" in", 0.25]] for _ in range(n)],
                    }
                    for name, n in zip(names, (d, 2 * d))
                },
                "links": [
                    {
                        "from": names[0],
                        "to": names[1],
                        "parent": [j // 2 for j in range(2 * d)],
                        "similarity": [0.5] * (2 * d),
                        "coverage": [1.0] * d,
                        "parent_coverage": [0.5] * (2 * d),
                    }
                ],
            }
        )
    )
    (run / "toy").mkdir()
    (run / "toy" / "plane.png").write_bytes(_png(4, 3))
    rd = RunDir(run)
    rd.manifest["sae"] = {
        "saes": [
            {
                "name": names[0],
                "l0": 12.5,
                "fvu": 0.0,
                "loss_recovered": 1.0,
                "dead_frac": 0.0,
                "dense_frac": 0.25,
                "density_log10_hist": [0] * 39 + [d],
            }
        ]
    }
    rd.save()
    return run


@pytest.fixture(scope="module")
def client(run) -> TestClient:
    return TestClient(create_app(run), base_url="http://127.0.0.1", raise_server_exceptions=False)


@pytest.fixture(scope="module")
def names(run) -> tuple[str, str, int]:
    d = ActivationStore(run / "activations" / "val").d_in
    return f"identity-{d}", f"doubled-{2 * d}", d


def test_overview_lists_the_lm_and_every_dictionary(client, run, names):
    identity, doubled, d = names
    o = client.get("/api/overview").json()
    dicts = {x["name"]: x for x in o["dictionaries"]}
    assert set(dicts) == {"neurons", identity, doubled}
    assert dicts[identity]["n_units"] == d and dicts[doubled]["n_units"] == 2 * d and dicts[identity]["l0"] == 12.5
    assert o["lm"]["val_loss"] == RunDir(run).manifest["lm"]["val_loss"]
    assert o["interpretability"]["neuron_score_mean"] == pytest.approx(o["interpretability"]["feature_score_mean"])
    assert o["pictures"] == {"toy": ["toy/plane.png"], "analysis": ["analysis/autointerp_scores.png"]}
    assert client.get("/api/files/toy/plane.png").content == (run / "toy" / "plane.png").read_bytes()


def test_feature_page_of_an_identity_feature_is_its_neuron(client, run, names):
    identity, doubled, d = names
    store = FeatureStore(run / FILENAME)
    unit = max(range(d), key=lambda u: store.unit("neurons", u)["fire_count"])
    feature = client.get(f"/api/saes/{identity}/features/{unit}").json()
    neuron = client.get(f"/api/neurons/{unit}").json()
    for key in ("fire_count", "max_act", "hist", "hist_max", "explanation", "simulation_score"):
        assert feature[key] == pytest.approx(neuron[key]), key
    assert [e["row"] for e in feature["top_examples"]] == [e["row"] for e in neuron["top_examples"]]
    assert feature["top_examples"][0]["activation"] == pytest.approx(feature["max_act"])
    example = feature["top_examples"][0]
    assert example["acts"][example["center"]] == pytest.approx(example["activation"])
    assert len(feature["random_examples"]) == 4 and 1 <= len(feature["intervals"]) <= 3
    assert feature["constituents"][0]["unit"] == unit and feature["constituents"][0]["value"] == pytest.approx(1.0)
    assert neuron["used_by"][identity][0]["unit"] == unit
    assert [u for u, _ in store.neuron_users(doubled, unit)][:2] in ([2 * unit, 2 * unit + 1], [2 * unit + 1, 2 * unit])
    logits = store.logits(identity, unit)
    assert [t for t, _ in logits["top"]] == [t for t, _ in feature["logits"]["top"]]
    family = feature["family"]
    assert family["ancestors"] == []
    assert [f["feature"] for f in family["descendants"][0]["features"]] == [2 * unit, 2 * unit + 1]
    assert [f["sources"][0][0] for f in family["descendants"][0]["features"]] == ["python-docs", "bible"]
    assert family["descendants"][0]["features"][0]["parent_coverage"] == 0.5
    assert family["self"]["feature"] == unit and family["self"]["after"] == [[" in", 0.25]]
    child = client.get(f"/api/saes/{doubled}/features/{2 * unit + 1}").json()
    assert [(a["sae"], a["feature"]) for a in child["family"]["ancestors"]] == [(identity, unit)]


def test_feature_list_sorts_filters_and_pages(client, run, names):
    identity, _, d = names
    full = client.get(f"/api/dicts/{identity}/units", params={"sort": "density", "limit": 200}).json()
    assert full["total"] == d and len(full["rows"]) == d
    densities = [r["density"] for r in full["rows"]]
    assert densities == sorted(densities, reverse=True)
    pages = [
        client.get(f"/api/dicts/{identity}/units", params={"sort": "density", "limit": 7, "offset": o}).json()["rows"]
        for o in range(0, d, 7)
    ]
    assert [r["unit"] for p in pages for r in p] == [r["unit"] for r in full["rows"]]
    middle = sorted(densities)[d // 2]
    dense = client.get(f"/api/dicts/{identity}/units", params={"min_density": middle, "limit": 200}).json()
    assert dense["total"] == sum(x >= middle for x in densities)
    store = FeatureStore(run / FILENAME)
    word = next(r["explanation"] for r in full["rows"] if r["explanation"]).split('"')[1]
    found = client.get(f"/api/dicts/{identity}/units", params={"q": word, "limit": 200}).json()
    assert found["total"] == len(store.search_text(word, identity, top=10_000)) > 0
    text = store.token_text(
        int(np.bincount(ActivationStore(run / "activations" / "val").origin(np.arange(1024))["token"]).argmax())
    )
    by_token = client.get(f"/api/dicts/{identity}/units", params={"token": text, "limit": 3}).json()
    best = store.search_token(text, identity, top=1)[0]
    assert by_token["rows"][0]["unit"] == best["unit"] and by_token["rows"][0]["f1"] == pytest.approx(best["f1"])
    assert by_token["matched_tokens"] == [text]
    assert client.get(f"/api/dicts/{identity}/units", params={"token": "no such token"}).json()["total"] == 0


@pytest.mark.parametrize(
    "method, url, body, status",
    [
        ("get", "/api/saes/nope/features/0", None, 404),
        ("get", "/api/saes/identity-64/features/64", None, 404),
        ("get", "/api/saes/identity-64/features/-1", None, 404),
        ("get", "/api/saes/identity-64/features/99999999999999999999999999", None, 404),
        ("get", "/api/saes/neurons/features/0", None, 404),
        ("get", "/api/neurons/64", None, 404),
        ("get", "/api/saes/identity-64/features/abc", None, 422),
        ("get", "/api/dicts/nope/units", None, 404),
        ("get", "/api/dicts/identity-64/units?offset=-5", None, 422),
        ("get", "/api/dicts/identity-64/units?limit=100000", None, 422),
        ("get", "/api/dicts/identity-64/units?sort=unit;DROP", None, 400),
        ("get", "/api/dicts/identity-64/units?sort=f1", None, 400),
        ("get", "/api/dicts/identity-64/units?min_density=abc", None, 422),
        ("get", "/api/dicts/identity-64/units?q=" + "x" * 1000, None, 422),
        ("get", "/api/files/toy/..%2F..%2Frun.json", None, 404),
        ("get", "/api/files/..%2Frun.json", None, 404),
        ("get", "/api/files/lm/model.safetensors", None, 404),
        ("get", "/api/files/toy/missing.png", None, 404),
        ("get", "/static/..%2F..%2Fapp.py", None, 404),
        ("get", "/api/nothing/here", None, 404),
        ("post", "/api/live", {"text": "x" * 5000, "dictionary": "neurons"}, 422),
        ("post", "/api/live", {"text": "God sees " * 40, "dictionary": "neurons"}, 400),
        ("post", "/api/live", {"text": "  ", "dictionary": "neurons"}, 400),
        ("post", "/api/live", {"text": "God", "dictionary": "../saes"}, 404),
        ("post", "/api/live", {"text": 3}, 422),
        ("post", "/api/steer", {"sae": "identity-64", "feature": 64, "value": 1, "prompt": "God"}, 404),
        ("post", "/api/steer", {"sae": "neurons", "feature": 0, "value": 1, "prompt": "God"}, 404),
        ("post", "/api/steer", {"sae": "identity-64", "feature": 0, "value": 1e308, "prompt": "God"}, 400),
        (
            "post",
            "/api/steer",
            {"sae": "identity-64", "feature": 0, "value": 1, "prompt": "God", "n_tokens": 10_000},
            422,
        ),
        ("post", "/api/steer", {"sae": "identity-64", "feature": 0, "value": 1, "prompt": "God", "mode": "zap"}, 422),
    ],
)
def test_bad_input_is_a_json_4xx(client, names, method, url, body, status):
    if names[2] != 64:
        pytest.skip("urls above assume the tiny preset's 64 MLP neurons")
    response = client.request(method.upper(), url, json=body)
    assert response.status_code == status, response.text
    assert "error" in response.json() and "Traceback" not in response.text


def test_live_text_reports_the_lm_activations(client, run, names):
    identity, doubled, d = names
    text = "God sees the light. Caesar calls Rome."
    live = client.post("/api/live", json={"text": text, "dictionary": identity}).json()
    tokenizer, model = load_tokenizer(run / "tokenizer.json"), load_lm(run / "lm")
    tokens = torch.tensor([eos_id(tokenizer), *tokenizer.encode(text).ids])
    _, cache = model.run_with_cache(tokens[None], names_filter=HOOK)
    acts_TD = cache[HOOK][0, 1:]
    assert [t["token"] for t in live["tokens"]] == tokens[1:].tolist()
    assert "".join(t["text"] for t in live["tokens"]) == tokenizer.decode(tokens[1:].tolist())
    for t, row in zip(live["tokens"], acts_TD):
        best = int(row.argmax())
        if row[best] > 0:
            assert t["units"][0]["unit"] == best and t["units"][0]["act"] == pytest.approx(float(row[best]), rel=1e-5)
    top = live["units"][0]
    assert top["max_act"] == pytest.approx(float(acts_TD.max()), rel=1e-5)
    np.testing.assert_allclose(top["acts"], acts_TD[:, top["unit"]].numpy(), rtol=1e-5)
    doubled_live = client.post("/api/live", json={"text": text, "dictionary": doubled}).json()
    assert doubled_live["units"][0]["max_act"] == pytest.approx(top["max_act"], rel=1e-5)


def test_steering_matches_the_analysis_hook(client, run, names):
    identity, _, _ = names
    body = {"sae": identity, "feature": 3, "value": 8.0, "prompt": "God sees", "n_tokens": 5}
    steered = client.post("/api/steer", json=body).json()
    tokenizer, model = load_tokenizer(run / "tokenizer.json"), load_lm(run / "lm")
    tokens = torch.tensor([eos_id(tokenizer), *tokenizer.encode("God sees").ids])
    hook = steering_hook(load_sae(run / "saes" / identity), 3, "clamp", 8.0)
    expected = next_token_change(model, HOOK, tokens, hook, top=10)
    assert [r["token"] for r in steered["after"]] == [t for t, _, _ in expected["after"]]
    assert steered["after"][0]["p_after"] == pytest.approx(expected["after"][0][2], rel=1e-4)
    assert [r["token"] for r in steered["gains"]] == [t for t, _, _ in expected["gains"]]
    assert len(tokenizer.encode(steered["continuation"]).ids) <= 5 * 2


@pytest.fixture(scope="module")
def server(run):
    """The app under uvicorn on a free local port, in a background thread."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(create_app(run), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not uv.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    uv.should_exit = True
    thread.join(timeout=10)


def test_server_answers_a_concurrent_burst(server, names):
    identity, _, d = names
    urls = (
        [f"{server}/api/saes/{identity}/features/{i % d}" for i in range(150)]
        + [f"{server}/api/dicts/{identity}/units?offset={i}" for i in range(40)]
        + [f"{server}/api/saes/{identity}/features/{d}"] * 10
    )
    with httpx.Client(timeout=30) as http, ThreadPoolExecutor(20) as pool:
        codes = list(pool.map(lambda u: http.get(u).status_code, urls))
    assert codes.count(200) == 190 and codes.count(404) == 10


def test_cli_serve_and_export_errors_are_one_line(tmp_path, run):
    env_path = str(Path(__file__).parent.parent / "src")
    missing = subprocess.run(
        [sys.executable, "-m", "monosemantic", "serve", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert (
        missing.returncode == 2
        and missing.stderr.startswith("error: run directory")
        and "Traceback" not in missing.stderr
    )
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(UserError, match="not an earlier export"):
        export_site(run, tmp_path)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_export_writes_every_page(run, names, tmp_path):
    identity, doubled, d = names
    counts = export_site(run, tmp_path / "site")
    assert counts == {"pages": d + d + 2 * d, "pictures": 2}
    site = tmp_path / "site"
    prefix = f'(window.MONOSEMANTIC_DATA = window.MONOSEMANTIC_DATA || {{}})["saes/{identity}/features/5"] = '
    page_js = (site / "data" / "saes" / identity / "features" / "5.js").read_text()
    assert page_js.startswith(prefix)
    assert (
        json.loads(page_js[len(prefix) :].rstrip().rstrip(";"))["fire_count"]
        == FeatureStore(run / FILENAME).unit(identity, 5)["fire_count"]
    )
    assert (site / "files" / "toy" / "plane.png").is_file() and (site / "static" / "app.js").is_file()
    assert "MONOSEMANTIC_EXPORT = true" in (site / "index.html").read_text()
    assert len(list((site / "data" / "neurons").glob("*.js"))) == d
    again = export_site(run, site, max_units=2)
    assert again["pages"] == 6 and len(list((site / "data" / "neurons").glob("*.js"))) == 2


# ---- in a real browser ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file() or not Path(CHROMEDRIVER).is_file():
        pytest.skip(f"no Chromium: install the OS packages chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER})")
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture
def page(browser, request, tmp_path_factory):
    """The browser; a screenshot of it is saved under the pytest temp dir if the test fails."""
    failed_before = request.session.testsfailed
    yield browser
    if request.session.testsfailed > failed_before:
        shot = tmp_path_factory.getbasetemp() / "screenshots" / f"{request.node.name}.png"
        shot.parent.mkdir(exist_ok=True)
        browser.save_screenshot(str(shot))
        print(f"screenshot of the failed page: {shot}")


def wait_for(driver, css: str, text: str | None = None, timeout: float = 20):
    """The first element matching ``css`` (containing ``text``) once it is rendered."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, timeout)
    if text is not None:
        wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, css), text))
    return wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, css)))


def test_ui_overview(page, server, names):
    identity, doubled, d = names
    page.get(server + "/")
    wait_for(page, "main table", identity)
    main = page.find_element("css selector", "main").text
    assert "Language model" in main and "12.5" in main and doubled in main and "25.0%" in main
    assert page.find_element("css selector", "img[alt='toy/plane.png']").get_attribute("naturalWidth") != "0"


def test_ui_feature_page(page, server, run, names):
    identity, doubled, d = names
    store = FeatureStore(run / FILENAME)
    unit = max(range(d), key=lambda u: store.unit(identity, u)["fire_count"])
    u = store.unit(identity, unit)
    page.get(f"{server}/#/feature/{identity}/{unit}")
    wait_for(page, "#top-examples .ctx")
    assert page.find_element("css selector", "h1").text.startswith(f"Feature {unit}")
    assert page.find_element("css selector", "#score").text == f"{u['simulation_score']:.3f}"
    assert f"fires on {u['fire_count']:,} of" in page.find_element("css selector", "#explanation").text
    top = store.examples(identity, unit, "top")[0]
    first = page.find_element("css selector", "#top-examples .ctx")
    spans = first.find_elements("css selector", ".tok")
    assert [float(s.get_attribute("data-act")) for s in spans] == pytest.approx(top["acts"], abs=1e-3)
    centre = first.find_element("css selector", ".tok.center")
    assert float(centre.get_attribute("data-act")) == pytest.approx(u["max_act"], abs=1e-3)
    assert "rgba(234, 88, 12" in centre.get_attribute("style")
    main = page.find_element("css selector", "main").text
    assert "[object" not in main and "interval 2:" in main and "Random firing contexts" in main
    assert len(page.find_elements("css selector", ".ctx")) == len(store.examples(identity, unit))
    family = page.find_element("css selector", "#family").text
    assert f"feature {2 * unit + 1}" in family and "covers 50 % of its parent" in family
    assert "sources: python-docs 90 %" in family and "sources: bible 90 %" in family and "after:" in family
    page.find_element("css selector", "#family a").click()
    wait_for(page, "h1", f"Feature {2 * unit}")


def test_ui_search_by_token(page, server, run, names):
    identity, _, _ = names
    store = FeatureStore(run / FILENAME)
    text = store.token_text(
        int(np.bincount(ActivationStore(run / "activations" / "val").origin(np.arange(1024))["token"]).argmax())
    )
    best = store.search_token(text, identity, top=1)[0]
    page.get(f"{server}/#/features/{identity}")
    wait_for(page, "#unit-table tbody tr")
    box = page.find_element("css selector", "#search-form input[name=token]")
    box.send_keys(text)
    page.find_element("css selector", "#search-form button").click()
    wait_for(page, "#unit-table thead", "F1")
    first_row = page.find_element("css selector", "#unit-table tbody tr")
    assert first_row.find_element("css selector", "td a").text == str(best["unit"])
    assert f"{best['f1']:.3f}" in first_row.text


def test_ui_live_text(page, server, names):
    identity, _, _ = names
    page.get(f"{server}/#/live?dict={identity}")
    box = wait_for(page, "#live-text")
    box.clear()
    box.send_keys("God sees the light.")
    page.find_element("css selector", "#live-run").click()
    tokens = wait_for(page, "#live-tokens")
    assert tokens.text.replace("\n", "") == "God sees the light."
    wait_for(page, "#live-units tbody tr")
    page.find_element("css selector", "#live-tokens .tok").click()
    wait_for(page, "#live-detail", "strongest units on")
    box.clear()
    box.send_keys("God sees " * 40)
    page.find_element("css selector", "#live-run").click()
    assert "the LM reads at most" in wait_for(page, "#live-error").text


def test_ui_exported_site_opens_from_disk(page, run, names, tmp_path):
    identity, _, _ = names
    export_site(run, tmp_path / "site", max_units=3)
    page.get((tmp_path / "site" / "index.html").as_uri() + f"#/feature/{identity}/2")
    wait_for(page, "#top-examples .ctx")
    assert page.find_element("css selector", "h1").text.startswith("Feature 2")
    page.get((tmp_path / "site" / "index.html").as_uri() + f"#/features/{identity}")
    wait_for(page, "#unit-table tbody tr")
    assert page.find_element("css selector", ".list-count").text.endswith(f"of {names[2]}")


def test_ui_exported_token_search_ranks_as_serve_does(page, run, names, tmp_path):
    from urllib.parse import urlencode

    from monosemantic.browser.run_view import RunView

    _, doubled, _ = names
    view = RunView(run)
    text, folded = "God", " GOD"  # " GOD" is no token: both fall back to lower(trim(·)) and match "God"
    assert folded not in view.store.vocab.values() and view.store.tokens_matching(folded)
    export_site(run, tmp_path / "site", max_units=1)
    for query, sort, order in ((text, "f1", "desc"), (folded, "f1", "desc"), (text, "max_act", "asc")):
        want = view.unit_list(doubled, sort=sort, descending=order == "desc", token=query)
        assert want["total"] > 1
        page.get("about:blank")
        page.get(
            (tmp_path / "site" / "index.html").as_uri()
            + f"#/features/{doubled}?"
            + urlencode({"token": query, "sort": sort, "order": order})
        )
        wait_for(page, ".list-count", f"of {want['total']:,}")
        rows = page.find_elements("css selector", "#unit-table tbody tr")
        assert [r.find_element("css selector", "td a").text for r in rows] == [str(r["unit"]) for r in want["rows"]]
        assert [r.find_elements("css selector", "td")[5].text for r in rows] == [f"{r['f1']:.3f}" for r in want["rows"]]


# ---- hostile requests ---------------------------------------------------------------------------

HOSTILE_SEGMENTS = [
    "%00",
    "%00.png",
    "x%00y.png",
    "..%2F..%2Frun.json",
    "..",
    "%2e%2e",
    "x" * 300 + ".png",
    "y" * 5000,
    "%ff%fe",
    "%E2%80%AE.png",
    "-1",
    "99999999999999999999999999",
    "1e309",
    "NaN",
    "%20",
    "%0d%0aX: y",
    "a;b",
    "%25",
    "%3F",
    "%23",
]


def _route_templates(app) -> list[tuple[str, str]]:
    """(method, path template) of every route of the app, the static mount as /static/{file}."""
    routes = [(m, r.path) for r in app.routes if hasattr(r, "methods") for m in r.methods - {"HEAD"}]
    return routes + [("GET", "/static/{file}")]


def test_every_route_answers_hostile_path_parameters_with_4xx(client):
    templates = _route_templates(client.app)
    assert len(templates) >= 10
    for method, template in templates:
        for segment in HOSTILE_SEGMENTS:
            url = re.sub(r"\{[^}]+\}", segment, template)
            body = {"text": "God", "dictionary": segment} if method == "POST" else None
            response = client.request(method, url, json=body)
            assert response.status_code < 500, (method, url, response.status_code, response.text[:200])
            if response.status_code >= 400 and url.startswith("/api/"):
                assert "error" in response.json() and "Traceback" not in response.text


def test_pictures_with_a_nul_or_an_overlong_name_are_404(client):
    for url in ("/api/files/plots/%00.png", "/api/files/toy/plane%00.png", f"/api/files/toy/{'p' * 400}.png"):
        response = client.get(url)
        assert response.status_code == 404 and "no picture" in response.json()["error"]


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"sae": "a", "feature": 0, "value": 1e999999, "prompt": "x"}',
        b"\xff\xfe\x00",
        b'{"text": NaN, "dictionary": "neurons"}',
        b'{"sae": "a", "feature": 99999999999999999999999, "value": 1, "prompt": "x"}',
        b'{"sae": "a", "feature": 0, "value": "Infinity", "prompt": "x"}',
        b"null",
        b"",
    ],
)
def test_hostile_bodies_are_4xx(client, body):
    for url in ("/api/live", "/api/steer"):
        response = client.post(url, content=body, headers={"content-type": "application/json"})
        assert 400 <= response.status_code < 500 and "error" in response.json(), (url, body[:40], response.text[:200])


def test_oversized_bodies_are_413_before_they_are_read(client):
    big = b'{"text": "' + b"x" * (50 << 20) + b'", "dictionary": "neurons"}'
    assert client.post("/api/live", content=big, headers={"content-type": "application/json"}).status_code == 413
    chunked = client.post(
        "/api/live",
        content=(big[i : i + 1 << 20] for i in range(0, len(big), 1 << 20)),
        headers={"content-type": "application/json"},
    )
    assert chunked.status_code == 413 and "request body over" in chunked.json()["error"]
    lying = client.post(
        "/api/live", content=b"{}", headers={"content-type": "application/json", "content-length": "-5"}
    )
    assert lying.status_code in (400, 413)


@pytest.mark.parametrize(
    "host, status",
    [
        ("evil.example", 400),
        ("evil.example:8000", 400),
        ("127.0.0.1.evil.example", 400),
        ("", 400),
        ("127.0.0.1:8000", 200),
        ("localhost", 200),
        ("[::1]:8000", 200),
    ],
)
def test_only_loopback_host_names_are_answered(client, names, host, status):
    identity, _, _ = names
    urls = [
        "/",
        "/static/app.js",
        "/api/overview",
        f"/api/saes/{identity}/features/0",
        "/api/neurons/0",
        f"/api/dicts/{identity}/units",
        "/api/nothing",
    ]
    for url in urls:
        response = client.get(url, headers={"host": host})
        assert response.status_code == (status if url != "/api/nothing" or status == 400 else 404), (url, host)
        if status == 400:
            assert "is not allowed" in response.json()["error"]
    live = client.post("/api/live", json={"text": "God", "dictionary": "neurons"}, headers={"host": host})
    assert live.status_code == status


def test_the_real_server_refuses_a_50_mb_body_and_a_foreign_host(server):
    with httpx.Client(timeout=30) as http:
        assert http.post(f"{server}/api/live", content=b"x" * (50 << 20)).status_code == 413
        assert http.get(f"{server}/api/overview", headers={"host": "evil.example"}).status_code == 400
        assert http.get(f"{server}/api/overview").status_code == 200
