"""The methods: Lightning tasks (``MultiLabelTask`` -> ``MeanTeacherTask`` -> ``CSSATask``,
``D2LTask``) over the pure functions they share (losses, pseudo-label thresholds, contexts,
metrics) and the loss table each task declares (:mod:`~cssa_lightning.methods.loss_terms`)."""
