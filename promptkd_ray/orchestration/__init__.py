"""The only modules that import Ray: they run the plain-PyTorch core on a cluster.

    cluster        connect (or start a local cluster), what it offers, user errors inside Ray failures
    session        a command's Ray session: started for the command, shut down after it (or left as found)
    progress       the console: a progress bar per epoch and one line per epoch, fed by rank 0
    encoder        one image encoder (one autocast rule) for the teacher pool and batch inference
    teacher_pool   the teacher actors (`TeacherPredictor`): the run's own, or Ray Data's autoscaled pool
    bookkeeping    the run's small actors, created and named here: the bad-image ledger, the epoch clock
    epochs         which epoch the stream is in and that epoch's image order
    pipeline       Stage II's stream: images → decode tasks → teacher pool → trainers
    packs          a pack's shards read on Ray Data (the chosen ids' bytes)
    cache          the soft-label cache: teacher features of K seeded views, built once, replayed
    resident       `data.in_memory`: each Train worker decodes its share once and renders the views
    meter          a Train worker's epoch: its batches, one step each, a meter of named sums
    timeline       where a run's time goes: the driver's and rank 0's marks, seconds per phase
    audit          the id audit (`train.record_ids`): which ids each worker received per epoch
    trainer        one Ray Train `TorchTrainer` for both stages, and the worker's view of it
    checkpoints    per-epoch reports, resume, fingerprints (both stages)
    tensorboard    a run's scalars as TensorBoard event files
    tuning         Ray Tune for a sweep: domains, searcher, scheduler, tuner, concurrency
    inference      batch inference (`eval`, `predict`, the demo) on Ray Data or in-process

Every module imports Ray inside its functions, so importing it is free.
"""
