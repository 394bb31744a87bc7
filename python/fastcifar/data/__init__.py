"""Data: the data sets held in Rust (``datasets``; ``digits``: MNIST, FashionMNIST, SVHN) and the
loader (``loader``: the native fast path, or torch's DataLoader where it cannot run)."""
