"""The built-in networks (plain nn.Modules, one definition each) and the Rust engine that runs them:
PyTorch's state_dict layout, engine logits equal to eager PyTorch, freezing, heads, files, and named
errors for input the network does not fit."""

import collections

import pytest
import torch

import fastcifar
from fastcifar import models
from fastcifar.engine import capture

tv_models = pytest.importorskip("torchvision.models")

BUILTINS = [
    ("image_classifier", lambda: models.ImageClassifier(10), 32),
    ("resnet9", lambda: models.resnet9(10), 32),
    ("small_cnn", lambda: models.small_cnn(10, width=8), 32),
    ("resnet18", lambda: models.resnet18(1000), 64),
    ("resnet18_cifar", lambda: models.resnet18(10, cifar_stem=True), 32),
    ("image_classifier_gray28", lambda: models.ImageClassifier(10, in_channels=1, input_size=28), 28),
]


def channels(m):
    return next(iter(m.parameters())).shape[1]


@pytest.mark.parametrize("name,make,size", BUILTINS, ids=[c[0] for c in BUILTINS])
def test_engine_logits_are_eager_pytorchs_bit_for_bit(name, make, size):
    """The Rust engine runs the module's own tensors through the same ATen calls: equal logits in
    eval mode, and in train mode the same BatchNorm updates and dropout masks."""
    torch.manual_seed(0)
    m = make()
    twin = make()
    twin.load_state_dict(m.state_dict())
    native = capture.compile_module(m)
    assert native.is_graph
    x = torch.randn(3, channels(m), size, size)
    m.eval(), twin.eval()
    with torch.no_grad():
        assert torch.equal(native.forward(x, train=False), twin(x))
    twin.train()
    torch.manual_seed(5)
    y_ours = native.forward(x, train=True)
    torch.manual_seed(5)
    y_theirs = twin(x)
    assert torch.equal(y_ours, y_theirs)
    for k, v in twin.state_dict().items():
        assert torch.equal(m.state_dict()[k], v), k  # running stats and batch counts, in the module's own buffers


def test_resnet18_is_torchvisions_key_for_key_and_logit_for_logit():
    torch.manual_seed(0)
    m, tv = models.resnet18(1000), tv_models.resnet18(num_classes=1000)
    assert list(m.state_dict()) == list(tv.state_dict())
    assert [n for n, _ in m.named_parameters()] == [n for n, _ in tv.named_parameters()]
    tv.load_state_dict(m.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    m.eval(), tv.eval()
    with torch.no_grad():
        assert torch.equal(capture.compile_module(m).forward(x, train=False), tv(x))


def test_parameter_counts_and_in_channels():
    assert models.ImageClassifier(10).num_parameters() == 3_249_994
    assert models.resnet18(1000).num_parameters() == 11_689_512
    for make in (
        lambda c: models.ImageClassifier(10, in_channels=c),
        lambda c: models.small_cnn(10, in_channels=c),
        lambda c: models.resnet9(10, in_channels=c),
        lambda c: models.resnet18(10, cifar_stem=True, in_channels=c),
    ):
        assert channels(make(1)) == 1 and channels(make(4)) == 4
    assert models.ImageClassifier(10, input_size=28).fc1.in_features == 256 * 3 * 3
    assert models.ImageClassifier(10, input_size=(64, 32)).fc1.in_features == 256 * 8 * 4
    with pytest.raises(ValueError, match="input_size"):
        models.ImageClassifier(input_size=4)
    with pytest.raises(TypeError, match="in_channels"):
        models.small_cnn(in_channels=1.5)


def test_the_module_surface_is_nn_modules():
    m = models.small_cnn(10, width=8)
    assert isinstance(m, torch.nn.Module)
    m.zero_grad()
    assert len(list(m.modules())) > 5 and len(list(m.buffers())) == 9
    m.apply(lambda mod: None)
    h = m.register_forward_hook(lambda mod, i, o: None)
    h.remove()
    assert m.half().conv1.weight.dtype == torch.float16
    assert [n for n, _ in m.named_parameters("net")][0] == "net.conv1.weight"  # torch prepends the prefix


def test_autograd_from_the_engine_reaches_the_modules_own_parameters():
    """A plain torch.optim loop over the engine's forward trains the module itself, exactly as
    the same loop over its eager forward trains a twin."""
    torch.manual_seed(0)
    m = models.small_cnn(10, width=8)
    twin = models.small_cnn(10, width=8)
    twin.load_state_dict(m.state_dict())
    native = capture.compile_module(m)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    runs = []
    for net, fwd in ((m, lambda x: native.forward(x, train=True)), (twin, twin)):
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        losses = []
        for _ in range(5):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(fwd(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        runs.append(losses)
    assert runs[0] == runs[1]
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
    assert m.num_classes == 10 and m.config == {
        "arch": "resnet18",
        "num_classes": 10,
        "cifar_stem": False,
        "in_channels": 3,
    }
    m.unfreeze("layer4")
    assert m.num_parameters(trainable_only=True) > 512 * 10 + 10
    with pytest.raises(ValueError, match="prefix: 'layer9'"):
        m.freeze("layer9")
    assert models.Module.from_config(m.config).fc.out_features == 10


def test_transfer_learning_from_a_torchvision_state_dict(tmp_path):
    tv = tv_models.resnet18(num_classes=1000)
    path = tmp_path / "resnet18.pth"
    torch.save(tv.state_dict(), path)
    m = models.resnet18(num_classes=10, weights=str(path))
    assert torch.equal(m.state_dict()["layer1.0.conv1.weight"], tv.state_dict()["layer1.0.conv1.weight"])
    assert m.state_dict()["fc.weight"].shape == (10, 512)
    m2 = models.resnet18(num_classes=10, weights=tv.state_dict())
    assert torch.equal(m2.state_dict()["bn1.running_var"], tv.state_dict()["bn1.running_var"])


def test_pretrained_offline_creates_the_hub_folder_and_says_where_to_put_the_file(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def fail(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", fail)
    with pytest.raises(
        RuntimeError, match=r"network is unreachable.*put it at .*hub/checkpoints/resnet18-f37072fd\.pth"
    ):
        models.resnet18(num_classes=10, pretrained=True)
    assert (tmp_path / "hub" / "checkpoints").is_dir()


@pytest.mark.parametrize(
    "x,exc,match",
    [
        (torch.zeros(2, 1, 32, 32), ValueError, r"conv1 \(Conv2d\) expects 3 input channels, got 1"),
        (
            torch.zeros(2, 3, 28, 28),
            ValueError,
            r"fc1 \(Linear\) expects 4096 input features, got 2304 .*another input size",
        ),
        (torch.zeros(2, 3, 32, 32, dtype=torch.float64), ValueError, "expected float32"),
        (torch.zeros(0, 3, 32, 32), ValueError, "empty"),
    ],
)
def test_input_the_network_does_not_fit_is_named(x, exc, match):
    native = capture.compile_module(models.ImageClassifier())
    with pytest.raises(exc, match=match):
        native.forward(x, train=False)
    if x.device.type == "cpu":  # the trainer's predict reaches the same check
        with pytest.raises(exc, match=match):
            fastcifar.Trainer(models.ImageClassifier(), device="cpu").predict_logits(x)


def test_a_model_moved_off_the_trainers_device_is_named():
    m = models.small_cnn(10, width=8)
    tr = fastcifar.Trainer(m, device="cpu")
    m.to("meta")
    with pytest.raises(ValueError, match="parameters are on meta, but this trainer trains on cpu"):
        tr.predict_logits(torch.zeros(1, 3, 32, 32))


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
    with pytest.raises(FileNotFoundError):
        m.load(tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.pth"):
        m.load(tmp_path / "junk.pth")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.pth", "w.pth", "w.safetensors"]  # no temp files left
