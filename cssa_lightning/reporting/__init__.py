"""What a run leaves behind: callbacks that log tables and figures (the only modules that import
wandb), the run folder's files, and ``cssa report``'s figures and report.md."""
