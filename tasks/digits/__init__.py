"""Digits: CapsNet on MNIST and MultiMNIST (Sabour et al. 2017), EM and Efficient variants."""

from tasks.digits.task import DigitsTask

__all__ = ["DigitsTask"]
