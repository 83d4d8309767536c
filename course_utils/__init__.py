"""Helpers for the course *Fine-tuning CNNs for image classification*.

Import the submodule you need (``from course_utils import data, backbones``); importing the
package itself is cheap and has no side effects (no TensorFlow, no downloads).
See ``docs/architecture.md`` for which notebook explains which module.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
