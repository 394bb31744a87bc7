"""Property: for random small networks built from the covered operators, the graph engine's forward,
backward and one optimizer step equal eager PyTorch's, bit for bit on CPU."""

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from _internals import native_loader
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastcifar
from fastcifar import transforms as T
from fastcifar.engine import capture

ACTS = {
    "relu": lambda: nn.ReLU(),
    "relu_inplace": lambda: nn.ReLU(inplace=True),
    "gelu": lambda: nn.GELU(),
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "silu": lambda: nn.SiLU(),
    "tanh": lambda: nn.Tanh(),
    "leaky": lambda: nn.LeakyReLU(0.2),
    "hardswish": lambda: nn.Hardswish(),
    "elu": lambda: nn.ELU(),
}


@st.composite
def networks(draw):
    """A conv stack (conv, optional norm, activation, optional pool, optional residual), then a head."""
    layers, c, size = [], 3, 8
    for _ in range(draw(st.integers(1, 3))):
        out = draw(st.sampled_from([4, 6, 8]))
        groups = draw(st.sampled_from([g for g in (1, 2) if c % g == 0 and out % g == 0]))
        k = draw(st.sampled_from([1, 3]))
        stride = draw(st.sampled_from([1, 2])) if size >= 4 else 1
        layers.append(("conv", c, out, k, stride, groups, draw(st.booleans())))
        size = (size + 2 * (k // 2) - k) // stride + 1
        c = out
        norm = draw(st.sampled_from(["none", "bn", "gn"]))
        if norm != "none":
            layers.append((norm, c))
        layers.append(("act", draw(st.sampled_from(sorted(ACTS)))))
        if size >= 4 and draw(st.booleans()):
            layers.append(("pool", draw(st.sampled_from(["max", "avg"]))))
            size //= 2
        if draw(st.booleans()):
            layers.append(("residual", c))
    head = draw(st.sampled_from(["flatten", "view", "adaptive", "mean"]))
    return layers, c, size, head, draw(st.sampled_from([0.0, 0.3]))


class Net(nn.Module):
    def __init__(self, spec):
        super().__init__()
        layers, c, size, head, p = spec
        self.kinds = []
        self.body = nn.ModuleList()
        for layer in layers:
            kind = layer[0]
            if kind == "conv":
                _, cin, cout, k, stride, groups, bias = layer
                self.body.append(nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=bias))
            elif kind == "bn":
                self.body.append(nn.BatchNorm2d(layer[1]))
            elif kind == "gn":
                self.body.append(nn.GroupNorm(2, layer[1]))
            elif kind == "act":
                self.body.append(ACTS[layer[1]]())
            elif kind == "pool":
                self.body.append(nn.MaxPool2d(2) if layer[1] == "max" else nn.AvgPool2d(2))
            else:
                self.body.append(nn.Conv2d(layer[1], layer[1], 3, padding=1))
            self.kinds.append(kind)
        self.head = head
        self.drop = nn.Dropout(p)
        self.fc = nn.Linear(c if head in ("adaptive", "mean") else c * size * size, 5)

    def forward(self, x):
        for kind, layer in zip(self.kinds, self.body):
            x = x + F.relu(layer(x)) if kind == "residual" else layer(x)
        if self.head == "flatten":
            x = torch.flatten(x, 1)
        elif self.head == "view":
            x = x.view(x.size(0), -1)
        elif self.head == "adaptive":
            x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        else:
            x = x.mean((2, 3))
        return self.fc(self.drop(x))


def twins(spec, seed):
    torch.manual_seed(seed)
    a = Net(spec)
    b = Net(spec)
    b.load_state_dict(a.state_dict())
    return a, b


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=networks(), seed=st.integers(0, 2**16), train=st.booleans())
def test_graph_forward_and_backward_equal_eager(spec, seed, train):
    eager, ours = twins(spec, seed)
    native = capture.compile_module(ours)
    assert native.is_graph, "every operator drawn here is covered"
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    eager.train(train)
    torch.manual_seed(seed)  # the same dropout masks on both sides
    want = eager(x)
    torch.manual_seed(seed)
    got = native.forward(x, train=train)
    assert torch.equal(got, want)
    if train:
        want.square().sum().backward()
        got.square().sum().backward()
        for (name, p), q in zip(eager.named_parameters(), ours.parameters()):
            assert torch.equal(p.grad, q.grad), name
        for (name, p), q in zip(eager.named_buffers(), ours.buffers()):
            assert torch.equal(p, q), name


def one_batch(seed):
    rng = np.random.default_rng(seed)
    ds = fastcifar.Dataset.from_numpy(rng.integers(0, 256, (8, 8, 8, 3), dtype=np.uint8), rng.integers(0, 5, 8))
    return fastcifar.DataLoader(
        ds, batch_size=8, transform=T.Compose([T.ToTensor(), T.Normalize((0.5,) * 3, (0.25,) * 3)])
    )


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=networks(), seed=st.integers(0, 2**16), adam=st.booleans())
def test_one_optimizer_step_on_the_engine_equals_eager(spec, seed, adam):
    eager, ours = twins(spec, seed)

    def opt(m):
        if adam:
            return torch.optim.Adam(m.parameters(), lr=1e-2, weight_decay=1e-4)
        return torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, nesterov=True)

    ld = one_batch(seed)
    torch.manual_seed(seed)
    fastcifar.Trainer(ours, opt(ours), device="cpu").fit(ld, epochs=1, progress=False)
    o = opt(eager)
    (x, y) = next(iter(native_loader(ld).epoch(0)))
    torch.manual_seed(seed)
    eager.train()
    o.zero_grad()
    F.cross_entropy(eager(x), y).backward()
    o.step()
    for (k, a), b in zip(eager.state_dict().items(), ours.state_dict().values()):
        assert torch.equal(a, b), k
