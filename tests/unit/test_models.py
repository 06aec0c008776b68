import pytest
import torch

from labelrefinery.errors import ConfigError
from labelrefinery.models import ModelSpec, available_models, build_model, check_model_name

FAST = ["convnet", "resnet20", "resnet18", "mobilenet_v2", "alexnet_bn"]


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_forward_shape(name, channels, size):
    model = build_model(ModelSpec(name, 7, channels, size)).eval()
    with torch.no_grad():
        out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, 7)


def test_resnet50_small_stem():
    model = build_model(ModelSpec("resnet50", 10, 1, 28))
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity) and model.fc.out_features == 10
    big = build_model(ModelSpec("resnet50", 10, 3, 224))
    assert big.conv1.kernel_size == (7, 7) and isinstance(big.maxpool, torch.nn.MaxPool2d)


def test_alexnet_bn_has_no_dropout_and_no_last_bias():
    model = build_model(ModelSpec("alexnet_bn", 10, 3, 224))
    assert not any(isinstance(m, torch.nn.Dropout) for m in model.modules())
    assert model.classifier[-1].bias is None
    n_bn = sum(isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)) for m in model.modules())
    assert n_bn == 7  # after each of the 5 convs and 2 hidden fc layers


def test_unknown_model_lists_names():
    with pytest.raises(ConfigError, match=r"unknown model 'resnet9000'; known models: .*convnet"):
        check_model_name("resnet9000")
    assert "timm:NAME" in available_models()


def test_timm_model():
    pytest.importorskip("timm")
    model = build_model(ModelSpec("timm:resnet10t", 10, 1, 32)).eval()
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, 10)
