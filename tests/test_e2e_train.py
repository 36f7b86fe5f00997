import pytest
import torch

from toolkit.train import TrainConfig, train

pytestmark = pytest.mark.e2e


def test_one_epoch_on_real_mnist_reaches_96(real_mnist):
    assert real_mnist.canonical
    _, result = train(TrainConfig(epochs=1), real_mnist, torch.device("cpu"), progress=False)
    assert result["metrics"]["test"]["accuracy"] >= 0.96
    assert result["metrics"]["test"]["n"] == 10000
