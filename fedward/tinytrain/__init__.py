"""Models, sparse subsets and measured training memory for small sensor models.

Floor 1: imports nothing of ours. torch lives here and in the edge trainer only.
Model parameters travel through the rest of fedward as ``Params``: an ordered
``dict[str, numpy.ndarray]`` of float32 tensors keyed by their torch names.
"""
