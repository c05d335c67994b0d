"""Plain ``nn.Module``s: the CLIP backbone, the heads, and the network that joins them. No
Lightning and no training logic here: the tasks of :mod:`cssa_lightning.methods` hold these."""
