"""Device choice and batch transfer (alignkit.utils.device)."""

import torch

from alignkit.utils.device import pick_device, to_device


def test_pick_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto") == torch.device("cuda")
    assert pick_device("cuda:1") == torch.device("cuda:1") and pick_device("cpu") == torch.device("cpu")


def test_batches_go_to_a_cuda_device_through_pinned_memory(monkeypatch):
    """Review finding S7, the CUDA path forced on the CPU: every CPU tensor of the batch is
    pinned and copied with ``non_blocking=True``; to the CPU it is a plain ``.to``. The
    transfer is recorded, not run (no CUDA here)."""
    calls = []

    def pin(self):
        calls.append(("pin", self.shape))
        return self

    def to(self, device, non_blocking=False):
        calls.append(("to", self.shape, torch.device(device), non_blocking))
        return self

    batch = {"input_ids": torch.zeros(2, 3, dtype=torch.long), "mask": torch.ones(2, 3), "n_seqs": 2}
    plain = to_device(batch, "cpu")
    assert plain["n_seqs"] == 2 and torch.equal(plain["mask"], batch["mask"])
    monkeypatch.setattr(torch.Tensor, "pin_memory", pin)
    monkeypatch.setattr(torch.Tensor, "to", to)
    to_device(batch, "cpu")
    assert calls == [("to", (2, 3), torch.device("cpu"), False)] * 2
    calls.clear()
    out = to_device(batch, torch.device("cuda:0"))
    assert calls == [("pin", (2, 3)), ("to", (2, 3), torch.device("cuda:0"), True)] * 2
    assert out["n_seqs"] == 2 and out.keys() == batch.keys()
