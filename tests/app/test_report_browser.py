"""Open a demo report.html in headless Chromium (no network) and check plots and table.

Uses Debian's /usr/bin/chromium through Playwright; never downloads a browser and skips
when it is missing. The report is rendered from a small hand-made summary so this test
does not need a training run (tests/recipes/test_demo.py checks the real one's files).
"""

from pathlib import Path

import pytest

from alignkit.report import plots
from alignkit.report.html import render_report

pytestmark = pytest.mark.browser
CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def _summary():
    stat = lambda m, s=0.1: {"mean": m, "std": s, "per_seed": [m - s, m, m + s]}  # noqa: E731
    methods = {name: {"gold": stat(g), "proxy": stat(p), "kl": stat(k), "win_rate": stat(w), "length": stat(9.0)}
               for name, g, p, k, w in [("base", 1.0, 0.0, 0.0, 0.5), ("ppo", 2.5, 3.0, 4.0, 0.8),
                                        ("dpo", 2.0, 1.5, 2.0, 0.7), ("best_of_n", 2.2, 2.0, 1.8, 0.75)]}
    sweep = {"ppo": [{"label": f"β={b}", "kl": k, "proxy": p, "gold": g}
                     for b, k, p, g in [(0.3, 1, 1, 2), (0.1, 3, 2, 2.6), (0.0, 9, 4, 1.5)]],
             "best_of_n": [{"label": f"n={n}", "kl": k, "proxy": p, "gold": g}
                           for n, k, p, g in [(1, 0, 0, 1), (16, 1.8, 2, 2.2), (128, 3.9, 3, 1.9)]]}
    return {
        "task": "assistant", "seeds": [0, 1, 2], "wall_s": 100.0, "methods": methods,
        "beats_base": {m: {"gain": 1.0, "ci_low": 0.8, "ci_high": 1.2, "level": 0.95, "ok": True, "n_seeds": 3,
                           "n_prompts": 48} for m in ("ppo", "dpo", "best_of_n")},
        "sweep": sweep,
        "overoptimization": {"ppo": {"peak_index": 1, "loosest_index": 2, "peak_gold": 2.6, "peak_proxy": 2,
                                     "loosest_gold": 1.5, "loosest_proxy": 4, "peak_kl": 3, "loosest_kl": 9,
                                     "diverges": True}},
        "rounds": [{"round": 1, "gold": 1.5, "proxy": 1, "kl": 2, "rm_accuracy": 0.7},
                   {"round": 2, "gold": 2.0, "proxy": 2, "kl": 3, "rm_accuracy": 0.75}],
        "reward_model": {"heldout_accuracy": 0.75, "ece": 0.05,
                         "calibration_bins": [{"confidence": c, "frequency": c + 0.02, "count": 10}
                                              for c in (0.15, 0.45, 0.85)]},
        "annotators": {"agreement": {"careful_vs_flattered": 0.7, "cohen_kappa": 0.4}},
        "active_learning": {"target_accuracy": 0.8, "model": "bow", "strategies": {
            "random": {"labels_needed": 120, "final_accuracy": 0.85,
                       "curve": [{"n_labels": 20, "accuracy": 0.6}, {"n_labels": 120, "accuracy": 0.8}]},
            "disagreement": {"labels_needed": 80, "final_accuracy": 0.87,
                             "curve": [{"n_labels": 20, "accuracy": 0.6}, {"n_labels": 80, "accuracy": 0.8}]}}},
    }


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    s = _summary()
    figs = {
        "Gold and proxy reward vs KL": plots.plot_reward_vs_kl(s["sweep"], out / "reward_vs_kl.png"),
        "Per-round curves": plots.plot_rounds(s["rounds"], out / "rounds.png"),
        "Calibration": plots.plot_calibration(s["reward_model"]["calibration_bins"], 0.05, out / "calibration.png"),
        "Agreement": plots.plot_agreement(s["annotators"]["agreement"], out / "agreement.png"),
    }
    return render_report(s, figs, out / "report.html")


def test_report_has_no_external_resources(report):
    html = report.read_text()
    assert "<script" not in html and "https://" not in html and "http://" not in html


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is not installed")
def test_report_renders_in_headless_chromium(report):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            page = browser.new_page()
            requests = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(report.as_uri(), timeout=30_000)
            # every plot decoded into a real image
            imgs = page.locator("img.plot")
            assert imgs.count() == 4
            for i in range(imgs.count()):
                w = imgs.nth(i).evaluate("el => el.complete && el.naturalWidth")
                assert w and w > 100
            # the method-comparison table: header + one row per method
            rows = page.locator("#method-table tbody tr")
            assert rows.count() == 4
            assert page.locator("#method-table tbody tr").first.locator("td").first.inner_text() == "base"
            assert "gold reward" in page.locator("#method-table thead").inner_text()
            assert "divergence: yes" in page.content()
            assert all(u.startswith(("file://", "data:")) for u in requests)
        finally:
            browser.close()
