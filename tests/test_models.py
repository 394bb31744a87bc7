"""Models: PyTorch state_dict layout, logits parity both ways, freezing, heads, bad input."""
import collections

import numpy as np
import pytest
import torch

import fastcifar
from fastcifar import models, reference

tv_models = pytest.importorskip("torchvision.models")

CASES = [
    ("image_classifier", lambda: models.ImageClassifier(10), lambda: reference.ImageClassifier(10), 32),
    ("resnet9", lambda: models.resnet9(10), lambda: reference.ResNet9(10), 32),
    ("small_cnn", lambda: models.small_cnn(10, width=8), lambda: reference.SmallCNN(10, width=8), 32),
    ("resnet18", lambda: models.resnet18(1000), lambda: tv_models.resnet18(num_classes=1000), 64),
    ("resnet18_cifar", lambda: models.resnet18(10, cifar_stem=True), lambda: reference.resnet18(10, cifar_stem=True), 32),
]


@pytest.mark.parametrize("name,make,make_ref,size", CASES, ids=[c[0] for c in CASES])
def test_state_dict_matches_pytorch_keys_shapes_and_order(name, make, make_ref, size):
    m, ref = make(), make_ref()
    sd, rsd = m.state_dict(), ref.state_dict()
    assert list(sd) == list(rsd)
    for k in sd:
        assert sd[k].shape == rsd[k].shape and sd[k].dtype == rsd[k].dtype, k
    assert m.num_parameters() == sum(p.numel() for p in ref.parameters())
    assert [n for n, _ in m.named_parameters()] == [n for n, _ in ref.named_parameters()]


@pytest.mark.parametrize("name,make,make_ref,size", CASES, ids=[c[0] for c in CASES])
def test_logits_agree_both_ways(name, make, make_ref, size):
    torch.manual_seed(0)
    m, ref = make(), make_ref()
    x = torch.randn(3, 3, size, size)
    # fastcifar -> PyTorch, strict
    ref.load_state_dict(m.state_dict(), strict=True)
    m.eval(), ref.eval()
    torch.testing.assert_close(m(x), ref(x), rtol=1e-5, atol=1e-5)
    # PyTorch -> fastcifar, strict (after a few BN updates so buffers are not defaults)
    ref.train()
    with torch.no_grad():
        for _ in range(2):
            ref(torch.randn(4, 3, size, size))
    ref.eval()
    m2 = make()
    m2.load_state_dict(ref.state_dict(), strict=True)
    m2.eval()
    torch.testing.assert_close(m2(x), ref(x), rtol=1e-5, atol=1e-5)
    assert int(m2.state_dict()[[k for k in m2.state_dict() if k.endswith("num_batches_tracked")][0]]) == 2


def test_seed_model_parameter_count():
    assert models.ImageClassifier(10).num_parameters() == 3_249_994


def test_train_mode_updates_batchnorm_like_pytorch():
    torch.manual_seed(1)
    m = models.small_cnn(10, width=8)
    ref = reference.SmallCNN(10, width=8)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(8, 3, 32, 32)
    m.train(), ref.train()
    torch.testing.assert_close(m(x), ref(x), rtol=1e-5, atol=1e-5)
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(m.state_dict()[k], v, rtol=1e-5, atol=1e-6, msg=k)


def test_autograd_flows_to_live_parameters():
    # A plain torch.optim loop over model.parameters() trains the Rust-held model exactly as it
    # trains the equivalent nn.Module.
    torch.manual_seed(0)
    m = models.small_cnn(10, width=8)
    ref = reference.SmallCNN(10, width=8)
    ref.load_state_dict(m.state_dict())
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    runs = []
    for net, params in ((m, m.parameters()), (ref, list(ref.parameters()))):
        opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
        losses = []
        for _ in range(8):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        runs.append(losses)
    np.testing.assert_allclose(runs[0], runs[1], rtol=1e-4)
    assert runs[0][-1] < runs[0][0]


def test_strict_loading_names_missing_unexpected_and_misshaped_keys():
    m = models.small_cnn(10, width=8)
    sd = m.state_dict()
    del sd["fc.bias"]
    sd["extra.weight"] = torch.zeros(1)
    sd["conv1.weight"] = torch.zeros(1, 2, 3, 3)
    with pytest.raises(ValueError) as e:
        m.load_state_dict(sd)
    msg = str(e.value)
    assert "missing keys: fc.bias" in msg and "unexpected keys: extra.weight" in msg and "conv1.weight" in msg
    del sd["extra.weight"], sd["conv1.weight"]
    r = m.load_state_dict(sd, strict=False)
    assert r.missing_keys == ["conv1.weight", "fc.bias"] and r.unexpected_keys == []
    with pytest.raises(TypeError, match="not a tensor"):
        m.load_state_dict({"fc.bias": [1, 2]}, strict=False)


def test_freeze_unfreeze_and_replace_head():
    m = models.resnet18(num_classes=1000)
    m.freeze()
    assert m.num_parameters(trainable_only=True) == 0
    m.replace_head(10)
    assert m.num_parameters(trainable_only=True) == 512 * 10 + 10
    assert m.num_classes == 10 and m.config == {"arch": "resnet18", "num_classes": 10, "cifar_stem": False}
    m.unfreeze("layer4")
    assert m.num_parameters(trainable_only=True) > 512 * 10 + 10
    with pytest.raises(ValueError, match="prefix: 'layer9'"):
        m.freeze("layer9")
    assert len(m.parameters("fc")) == 2


def test_transfer_learning_from_a_torchvision_state_dict(tmp_path):
    tv = tv_models.resnet18(num_classes=1000)
    path = tmp_path / "resnet18.pth"
    torch.save(tv.state_dict(), path)
    m = models.resnet18(num_classes=10, weights=str(path))
    assert torch.equal(m.state_dict()["layer1.0.conv1.weight"], tv.state_dict()["layer1.0.conv1.weight"])
    assert m.state_dict()["fc.weight"].shape == (10, 512)
    m2 = models.resnet18(num_classes=10, weights=tv.state_dict())
    assert torch.equal(m2.state_dict()["bn1.running_var"], tv.state_dict()["bn1.running_var"])


def test_pretrained_offline_says_where_to_put_the_file(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def fail(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", fail)
    with pytest.raises(RuntimeError, match=r"put it at .*resnet18-f37072fd\.pth"):
        models.resnet18(num_classes=10, pretrained=True)


@pytest.mark.parametrize("x,exc,match", [
    (torch.zeros(2, 1, 32, 32), ValueError, "3 channels"),
    (torch.zeros(3, 32, 32), ValueError, r"\(N, C, H, W\)"),
    (torch.zeros(2, 3, 28, 28), ValueError, "32x32"),
    (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), ValueError, "float"),
    (torch.zeros(0, 3, 32, 32), ValueError, "empty"),
    (np.zeros((2, 3, 32, 32), np.float32), TypeError, "torch.Tensor"),
    (torch.zeros(2, 3, 32, 32, dtype=torch.float64), ValueError, "expected float32"),
    (torch.zeros(2, 3, 32, 32, device="meta"), ValueError, "is on meta but the model is on cpu"),
    (torch.zeros(2, 3, 32, 32).to_sparse(), ValueError, "dense"),
])
def test_bad_model_inputs_are_named(x, exc, match):
    with pytest.raises(exc, match=match):
        models.ImageClassifier()(x)


def test_cuda_without_cuda_is_clear():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        models.small_cnn().to("cuda")


def test_save_and_load_weights_torch_and_safetensors(tmp_path):
    torch.manual_seed(0)
    m = models.small_cnn(10, width=8)
    for name in ("w.pth", "w.safetensors"):
        p = tmp_path / name
        m.save(p)
        m2 = models.small_cnn(10, width=8)
        m2.load(p)
        for k, v in m.state_dict().items():
            assert torch.equal(m2.state_dict()[k], v), k
    sd = torch.load(tmp_path / "w.pth", weights_only=True)
    assert isinstance(sd, collections.OrderedDict) and list(sd) == list(m.state_dict())
    ref = reference.SmallCNN(10, width=8)
    ref.load_state_dict(sd, strict=True)
    with pytest.raises(FileNotFoundError):
        m.load(tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.pth"):
        m.load(tmp_path / "junk.pth")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.pth", "w.pth", "w.safetensors"]  # no temp files left
