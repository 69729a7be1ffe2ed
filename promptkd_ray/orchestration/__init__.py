"""The only modules that import Ray: they run the plain-PyTorch core on a cluster.

    cluster        connect (or start a local cluster), what it offers, user errors inside Ray failures
    progress       the console: a progress bar per epoch and one line per epoch, fed by rank 0
    teacher_pool   the teacher actors (`TeacherPredictor`): the run's own, or Ray Data's autoscaled pool
    pipeline       Stage II's stream: images → decode tasks → teacher pool → trainers
    trainer        one Ray Train `TorchTrainer` for both stages, and the worker's view of it
    checkpoints    per-epoch reports, resume, fingerprints, TensorBoard (both stages)
    inference      batch inference (`eval`, `predict`, the demo) on Ray Data or in-process

Every module imports Ray inside its functions, so importing it is free.
"""
