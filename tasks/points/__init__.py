"""Points: the 3D Point Capsule autoencoder (Zhao et al., CVPR 2019) with Chamfer loss and SVM transfer.

Importing this package registers the ``points`` task; open3d and scikit-learn are
imported only when files are read or the SVM is trained (extra ``points``).
"""

from capsule_kit_tasks.points.task import PointsConfig, PointsTask

__all__ = ["PointsConfig", "PointsTask"]
