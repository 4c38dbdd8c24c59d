"""mixbench's Hydra launchers.

Hydra loads launcher classes only from the ``hydra_plugins`` namespace package.  This one lives next to
``tools/train.py``: Python puts ``tools/`` on ``sys.path`` when it runs a script from it, so Hydra finds the
launcher with nothing to install.  The logic is in :mod:`mixbench.sweep`; this package only adapts it.
"""
