"""Training: configs (``config``), samples (``data``), the loop (``loop``), checkpoints (``checkpoint``).

Import what you need from the submodules; this package imports nothing heavy, so loading a
checkpoint (``sf_policy.train.checkpoint.load_policy``) never pulls in the teacher.
"""
