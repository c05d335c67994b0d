"""The ``cssa`` command: the light entry point (:mod:`~cssa_lightning.commands.entry`), the
LightningCLI (``fit``, ``validate``, ``test``), ``predict`` and ``export``, and the loading of a
trained checkpoint they share. Nothing below this folder imports it."""
