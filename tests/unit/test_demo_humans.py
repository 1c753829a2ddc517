"""`demo humans` end to end on tiny sizes: the summary's shape, the report files, the CLI."""

import json

from alignkit.recipes.humans import HumansConfig, labels_to_cosine, labels_to_stay, run_humans


def test_labels_to_cosine_and_to_stay():
    assert labels_to_cosine([0.0, 0.5, 0.91, 0.8, 0.95], 0.9) == 2
    assert labels_to_stay([0.0, 0.5, 0.91, 0.8, 0.95], 0.9) == 4
    assert labels_to_stay([0.0, 0.95, 0.8], 0.9) is None
    assert labels_to_cosine([0.0, 0.5], 0.9) is None


def test_demo_humans_tiny(tmp_path):
    cfg = HumansConfig(out=str(tmp_path), seeds=[0, 1], max_labels=12, candidates=80, posterior_samples=32,
                       matrix_labels=30, test_pairs=200, stability_log2_beta=[0.0, 2.0], stability_gamma=[1.0, 0.5],
                       strategies=["random", "info-gain"])
    s = run_humans(cfg)
    assert set(s["label_efficiency"]) == {"random", "info-gain"}
    assert all(len(v) == 2 for v in s["label_efficiency"].values())
    assert all(n is None or 0 <= n <= 12 for v in s["label_efficiency"].values() for n in v)
    mx = s["misspecification"]
    assert set(mx["cells"]) == set(mx["annotators"]) and len(mx["annotators"]) == 8
    for a in mx["annotators"]:
        for b in mx["learners"]:
            c = mx["cells"][a][b]
            assert 0 <= c["angle_deg"]["mean"] <= 180 and 0 <= c["heldout_acc_true"]["mean"] <= 1
    assert [p["x"] for p in s["stability"]["myopic_gamma"]] == [1.0, 0.5]
    for f in ("report.html", "summary.json", "metrics.jsonl", "label_efficiency.png", "misspecification_angle.png",
              "stability.png"):
        assert (tmp_path / f).exists(), f
    assert json.loads((tmp_path / "summary.json").read_text())["label_efficiency"] == s["label_efficiency"]
    html = (tmp_path / "report.html").read_text()
    assert "Misspecification matrix" in html and "data:image/png;base64" in html
