"""Digits: CapsNet on MNIST and MultiMNIST (Sabour et al. 2017), EM and Efficient variants."""

from capsule_kit_tasks.digits.task import DigitsTask

__all__ = ["DigitsTask"]
