"""Study and report tooling: the experiment runner (`sage experiment`), the aggregation of its runs
into tables, paired statistics and plots, and the run viewer (`sage view`).

Apart from the training core (the rest of `sage`, what `sage fit`/`sage validate` need): this package
imports the core, the core never imports it (only the `sage` command dispatcher in `sage.cli.main` hands
`experiment` and `view` over to it). `tests/test_imports.py` checks both directions and that no import
cycle exists.
"""
