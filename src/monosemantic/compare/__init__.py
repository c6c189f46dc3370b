"""Comparisons across dictionaries and models: streamed correlation statistics, feature splitting
across sizes, the feature map, and universality (model A's features against model B's)."""
