import pytest
import torch
from conftest import synthetic_arrays

from toolkit.data import MNIST
from toolkit.model import CNN, MLP, count_parameters
from toolkit.train import TrainConfig, select_device, train

SEED_PRINT = """CNN(
  (conv1): Conv2d(1, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
  (pool): MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)
  (conv2): Conv2d(8, 16, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
  (fc1): Linear(in_features=784, out_features=10, bias=True)
)"""


def tiny_mnist():
    a = synthetic_arrays()
    return MNIST(a["train_images"], a["train_labels"], a["test_images"], a["test_labels"], "synthetic", None,
                 {"train": "x", "test": "y"})


def test_cnn_matches_seed():
    model = CNN()
    assert count_parameters(model) == 9098
    assert str(model) == SEED_PRINT
    assert model(torch.zeros(7, 1, 28, 28)).shape == (7, 10)


def test_mlp_shape():
    assert MLP()(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_training_lowers_loss_and_is_deterministic():
    cfg = TrainConfig(epochs=3, batch_size=20, lr=3e-3, seed=5)
    # identical weights for the same seed *and thread count* (the default thread count follows the
    # machine's load at start, and a reduction split over other threads rounds differently)
    m1, r1 = train(cfg, tiny_mnist(), torch.device("cpu"), progress=False, threads=1)
    m2, r2 = train(cfg, tiny_mnist(), torch.device("cpu"), progress=False, threads=1)
    losses = [h["train_loss"] for h in r1["history"]]
    assert losses[-1] < losses[0]
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items(), strict=False):
        assert torch.equal(a, b), k
    assert set(r1["metrics"]) == {"train", "test"}
    m3, _ = train(TrainConfig(epochs=1, batch_size=20, seed=6), tiny_mnist(), torch.device("cpu"), progress=False)
    assert not torch.equal(m3.conv1.weight, m1.conv1.weight)


def test_device_selection():
    assert select_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert select_device("auto").type == "cpu"
        with pytest.raises(Exception, match="no CUDA GPU"):
            select_device("cuda")


def test_config_validation():
    with pytest.raises(Exception, match="expected cnn, mlp, FILE.py:NAME"):
        TrainConfig(arch="resnet")
    with pytest.raises(Exception, match="at least 1"):
        TrainConfig(epochs=0)


def test_short_last_batch_is_trained(monkeypatch):
    """120 images at batch 50: steps of 50, 50 and 20, every image seen exactly once per epoch."""
    import toolkit.train as tr

    seen = []
    real = tr.EagerStep.__call__

    def counting(self, order, i):
        seen.append(order[i * self.batch_size : (i + 1) * self.batch_size].clone())
        return real(self, order, i)

    monkeypatch.setattr(tr.EagerStep, "__call__", counting)
    cfg = TrainConfig(epochs=2, batch_size=50, seed=1)
    model, result = train(cfg, tiny_mnist(), torch.device("cpu"), progress=False)
    assert [len(b) for b in seen] == [50, 50, 20] * 2
    for epoch in (seen[:3], seen[3:]):
        assert sorted(torch.cat(epoch).tolist()) == list(range(120))
    assert len(result["history"]) == 2 and all(torch.isfinite(p).all() for p in model.parameters())


def test_undoing_warm_up_steps_gives_the_fresh_optimisation():
    """What CudaGraphStep does after capture (or a failed capture): weights and Adam state back
    in place, so the next step equals a fresh model's first step."""
    import torch
    from torch import nn

    from toolkit.model import build_model
    from toolkit.train import restore_initial_state

    def fresh():
        torch.manual_seed(0)
        model = build_model("cnn")
        return model, torch.optim.Adam(model.parameters(), lr=1e-3)

    x, y = torch.rand(8, 1, 28, 28), torch.arange(8) % 10
    loss_sum = torch.zeros(())

    def step(model, opt):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    model, opt = fresh()
    params = list(model.parameters())
    saved = [p.detach().clone() for p in params]
    for _ in range(3):
        step(model, opt)
    restore_initial_state(params, saved, opt, loss_sum)
    assert all(torch.equal(p, s) for p, s in zip(params, saved, strict=False))
    step(model, opt)
    ref, ref_opt = fresh()
    step(ref, ref_opt)
    for p, q in zip(model.parameters(), ref.parameters(), strict=False):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-7)
