"""The graph program's layout: defined once in the core (``Op::layout``), shown by
``_native.graph_ops()``, and checked when a program is built, so a malformed program is refused by
name before it runs, never read by position into the wrong argument."""

import pytest
import torch

from fastcifar import _native


def _conv_program(args, op="conv2d"):
    """A convolution, then a flatten to logits."""
    return ([(op, args, "conv"), ("flatten", [("v", 0), 1, -1], "flat")], ("v", 1))


def _model(program, tensors):
    return _native.NativeModel.graph("m", ["w", "b"][: len(tensors)], tensors, train=program, eval=program)


W, B = torch.randn(4, 3, 3, 3), torch.randn(4)
GOOD = [("x", 0), ("p", 0), ("p", 1), [1, 1], [1, 1], [1, 1], 1]


def test_graph_ops_lists_every_op_with_its_arguments_by_name_and_kind():
    ops = dict(_native.graph_ops())
    assert [n for n, _ in ops["conv2d"]] == ["x", "weight", "bias", "stride", "padding", "dilation", "groups"]
    assert dict(ops["conv2d"])["padding"] == "a list of ints, or 'same' / 'valid'"
    assert dict(ops["batch_norm"])["use_batch_stats"] == "a bool"
    assert {"linear", "view", "cat", "add", "size", "getitem", "identity"} <= set(ops)
    # The good program runs, and gives eager PyTorch's numbers.
    x = torch.randn(2, 3, 8, 8)
    out = _model(_conv_program(GOOD), [W, B]).forward(x, train=False)
    torch.testing.assert_close(out, torch.nn.functional.conv2d(x, W, B, 1, 1).flatten(1))


@pytest.mark.parametrize(
    "program, message",
    [
        (_conv_program(GOOD[:-1]), r"node 0 \(conv, conv2d\): takes 7 arguments \(x, weight, bias, stride, "),
        (_conv_program(GOOD + [1]), r"takes 7 arguments .*, got 8"),
        (
            _conv_program(GOOD[:3] + ["x"] + GOOD[4:]),
            r"node 0 \(conv, conv2d\): argument 3 \(stride\) should be a list of ints, got Str",
        ),
        (_conv_program([1.5] + GOOD[1:]), r"argument 0 \(x\) should be a tensor, got Float"),
        (_conv_program(GOOD[:6] + [None]), r"argument 6 \(groups\) should be an int, got None"),
        (_conv_program(GOOD, op="conv3d"), r"graph: unknown op 'conv3d' at conv"),
        (_conv_program([("v", 0)] + GOOD[1:]), r"node 0 \(conv\) reads node 0, which does not come before it"),
        (_conv_program(GOOD[:2] + [("p", 5)] + GOOD[3:]), r"reads tensor 5, but there are 2"),
        (_conv_program([("q", 0)] + GOOD[1:]), r"graph: unknown reference kind 'q'"),
        (([], ("v", 3)), r"the output reads node 3, but there are 0"),
        (([("flatten", [("x", 0), 1.5, -1], "flat")], ("v", 0)), r"argument 1 \(start\) should be an int, got Float"),
    ],
)
def test_a_program_that_does_not_fit_the_layout_is_refused_by_name(program, message):
    with pytest.raises(ValueError, match=message):
        _model(program, [W, B])
