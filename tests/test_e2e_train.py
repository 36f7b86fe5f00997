import pytest
import torch

pytestmark = pytest.mark.e2e


def test_one_epoch_on_real_mnist_reaches_96(real_mnist, real_export):
    """The shared real-MNIST run (one epoch on the CPU) scores on the full test set."""
    assert real_mnist.canonical
    ckpt = torch.load(real_export / "cnn.pt", weights_only=True)
    test = ckpt["metrics"]["test"]
    assert test["accuracy"] >= 0.96 and test["n"] == 10000
    assert ckpt["recipe"]["epochs"] == 1 and ckpt["data_sha256"]["test"] == real_mnist.sha256["test"]
