"""Training: tensors from artifacts, the Lightning module, checkpoints, and the train entry."""
