"""The engine: ``Trainer`` (``trainer``) over the Rust loop; ``bridge`` (optimizer and schedule
objects to the loop), ``capture`` (torch.fx graphs for src/nn), ``checkpoint`` (files and
Trainer.load's rebuilding), ``history`` (History, EvalReport), ``inputs`` (predict's batches),
``lr_find`` (the range test), ``seam`` (``Engine``: what fastcifar.optim's optimizers and
schedules may ask of the loop)."""
