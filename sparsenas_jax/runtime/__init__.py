"""What every job shares: the loop and what it drives.

* ``loop``: start-up, restore-or-init, the epoch loop, progress, checkpoints,
  the divergence guard; a job hands it a ``loop.Job``.
* ``evaluation``: the masked evaluator (every example counted).
* ``divergence``: finiteness flags a step reports, and the error they raise.
* ``checkpoints``: Orbax checkpoints of a whole job state.
* ``parallel``: the device mesh, shardings, multi-host start and batches.
* ``compilation``: ahead-of-time compilation, compiler options, stored
  programs.
* ``host_memory``: XLA:CPU calls that reuse their buffers' pages.
* ``metrics``: scalars to ``metrics.jsonl`` and TensorBoard; steps/s and ETA.
"""
