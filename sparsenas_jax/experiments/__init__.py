"""One module per job; each is a library with a ``run(config, workdir)``."""
