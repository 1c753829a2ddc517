import torch

from alignkit.utils.metrics import MetricsLogger, read_metrics


def test_jsonl_and_tensorboard(tmp_path):
    with MetricsLogger(tmp_path) as log:
        log.log({"loss/total": torch.tensor(0.5), "reward/mean": 2}, step=1)
        log.log({"loss/total": 0.25}, step=2)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[0]["loss/total"] == 0.5 and rows[0]["reward/mean"] == 2.0
    assert any((tmp_path / "tb").iterdir())


def test_resume_appends(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as log:
        log.log({"a": 1}, step=1)
    with MetricsLogger(tmp_path, tensorboard=False, resume=True) as log:
        log.log({"a": 2}, step=2)
    assert [r["a"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1.0, 2.0]
