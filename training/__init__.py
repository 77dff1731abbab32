"""Train, export and evaluate the CIFAR-10 classifier the app serves.

Modules, one job each: `data` (datasets as uint8 arrays), `models` (builders), `train` (the run),
`export` (the SavedModel contract), `report` (figures), `evaluate` (`python -m training.evaluate`).
`python -m training` is the command line; nothing runs at import.
"""
