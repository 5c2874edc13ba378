"""The `finetune-phi` command line: the top floor.

The only package that imports `flows/` (to run the pipeline); it may import every floor below
(`tasks/`, `backends/`, the `finetune_phi` core, `trainer/`, `serving/`), and nothing imports
it. Each module is one command group: `main` (the parser, `config`, `demo`), `run`, `data`,
`models`, `endpoint`, `chat`, `azure_ml`; `options` holds what they share.
"""
