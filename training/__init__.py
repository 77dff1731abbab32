"""Train, export and evaluate the CIFAR-10 classifier the app serves.

Modules, one job each, in the order a run meets them: `config` (the run's settings and their
defaults), `hardware` (precision, strategy), `data` (datasets as uint8 arrays), `recipe` (the
hyperparameters, schedule, lookahead, augmentation and `build`), `models` (the networks),
`fit` (the fit loop, checkpoints), `multiworker` (what a TF_CONFIG cluster needs besides),
`serving_choice` (TTA, temperature and adaptive views chosen on validation), `export` (the
SavedModel contract), `measure` (the export measured as served), `report` (figures),
`publish` (versions appear whole), and `train`, the run that calls them top to bottom.
`python -m training` is the command line; `evaluate`, `quantize`, `views` and `uncertainty`
are commands of their own.
Nothing runs at import.
"""
