"""Optimizers whose update runs inside fastcifar's Rust training loop.

``fastcifar.Trainer`` takes ``torch.optim`` optimizers and schedules as you built them (SGD, Adam
and AdamW run their update in Rust; any other runs its own ``step()``). The classes here are the
same three with ``params`` optional: without it, the Trainer binds the model's trainable
parameters. Signatures (positional order included) and update rules are torch.optim's; a test
compares them step for step on CPU.

    opt = fastcifar.optim.Adam(lr=1e-3, weight_decay=1e-4)          # bound by the Trainer
    opt = fastcifar.optim.Adam(model.fc.parameters(), lr=1e-3)       # trains the head only

They are settings for the Rust loop, so ``step()`` and ``zero_grad()`` refuse: in a loop of your
own, use ``torch.optim``. ``param_groups[0]["lr"] = x`` takes effect at the next step of a fit.

Parameter groups as torch.optim takes them, each with its own ``lr`` and ``weight_decay`` (the other
hyper-parameters are the optimizer's), also run in Rust:

    opt = fastcifar.optim.SGD([{"params": biases, "lr": 0.64}, {"params": weights, "weight_decay": 5e-4}],
                              lr=0.01, momentum=0.9)

A group's rate is a fixed multiple of the optimizer's ``lr`` (0.64 is 64 times 0.01 here): schedules
and ``optimizer.lr = x`` move every group together, as torch's schedules scale each group's rate.
``Lookahead`` is airbench's moving average of the weights, for ``Trainer(..., lookahead=...)``.
``engine_settings`` turns a torch-style parameter group into the Rust update's settings (the seam
the trainer uses for torch.optim's optimizers too).
"""

from . import lr_scheduler
from .optimizers import SGD, Adam, AdamW, Lookahead, Optimizer

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "Lookahead", "lr_scheduler"]
