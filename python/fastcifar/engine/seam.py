"""``Engine``: what fastcifar.optim's optimizers and schedules may ask of the trainer that runs them.

The trainer owns one and hands it to its fastcifar optimizer with ``optimizer.attach(engine)``;
the optimizer (and a schedule through ``optimizer.engine``) then calls only these methods, never
the trainer's private parts. An optimizer no trainer has bound holds ``engine is None``: its state
is not there yet (``state_dict`` refuses), and a schedule reports the optimizer's own rate.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from .. import _native as _rs


class Engine:
    """The Rust training loop of one trainer, as its optimizer and schedule see it.

    - ``current_lr()``: the rate the next optimizer step uses (a float; the schedule's, once it moved).
    - ``current_momentum()``: SGD's momentum or Adam's beta1 the next step uses (cycled by OneCycleLR).
    - ``optimizer_state()``: the update's state (``lr``, ``initial_lr`` and ``params``: per parameter,
      in the optimizer's order, a dict of its buffers and ``step``, or None before its first step).
    - ``load_optimizer_state(lr=, momentum=, states=)``: sets the rate, the momentum / beta1 and the
      per-parameter states (as ``optimizer_state().params`` holds them; None for none).
    - ``named_parameters()``: the trained module's ``(name, parameter)`` pairs, for checkpoints that
      record parameter groups by name.
    """

    def __init__(self, native: _rs.NativeTrainer, model: torch.nn.Module):
        self._native = native
        self._model = model

    def current_lr(self) -> float:
        return self._native.lr

    def current_momentum(self) -> float:
        return self._native.momentum

    def optimizer_state(self) -> _rs.OptimizerState:
        return self._native.optimizer_state()

    def load_optimizer_state(self, *, lr: float, momentum: float, states: Sequence[dict | None]) -> None:
        self._native.load_optimizer_state(lr=lr, momentum=momentum, states=states)

    def named_parameters(self) -> Iterator[tuple[str, torch.nn.Parameter]]:
        return self._model.named_parameters()
