"""Graph classification with capsules: CapsGNN (Xinyi & Chen, ICLR 2019) on TU data sets.

Importing this package registers the ``graphs`` task; PyG and scikit-learn are
imported only when data or a model is built (extra ``graph``).
"""

from capsule_kit_tasks.graphs.task import GraphConfig, GraphTask

__all__ = ["GraphConfig", "GraphTask"]
