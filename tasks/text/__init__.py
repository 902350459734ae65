"""Text: capsule sentence classification (Zhao et al., EMNLP 2018), Capsule-A/B, learned or pretrained front end."""

from capsule_kit_tasks.text.task import TextTask

__all__ = ["TextTask"]
