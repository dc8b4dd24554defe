"""One module per data format, each turning its files into InteractionData the same way.

The registry that picks one by `--data.dataset` is `models.data.loaders.FORMATS`; what every format
shares (the builder, id order, numbers and timestamps, errors, item-text templates) is in `shared`.
"""
