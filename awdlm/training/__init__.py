"""Training: the epoch loop, NT-ASGD averaging and checkpoints."""
