# SPDX-License-Identifier: BSD-3-Clause
"""Device models from a Python file: `--device path/to/blinky.py:Blinky`.

The file is imported once per process under a module name made from its
absolute path (`_vfu_model_<digest>`), so two files with the same base name
never collide, and the spec becomes an ordinary "module:Class" name that
`registry.resolve_model` takes.  Every failure is a ValueError with one line.
"""
from __future__ import annotations

import hashlib
import importlib.util
import inspect
import os
import sys

from vfu_platform.backends.base import DeviceBackend


def is_file_spec(spec: str) -> bool:
    """True for "PATH.py:Class" (a file), False for a built-in name or "package.module:Class"."""
    path, colon, _ = spec.rpartition(":")
    return bool(colon) and (path.endswith(".py") or os.sep in path)


def module_name_for(path: str) -> str:
    """The unique module name a model file is imported as."""
    digest = hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:16]
    return f"_vfu_model_{digest}"


def load_model_file(spec: str) -> str:
    """Import the file of "PATH.py:Class", check the class, and return "module:Class" for it."""
    path, _, class_name = spec.rpartition(":")
    if not path or not class_name:
        raise ValueError(f"device model {spec!r}: expected PATH.py:ClassName")
    if not os.path.isfile(path):
        raise ValueError(f"device model {spec!r}: no such file {path!r}")
    name = module_name_for(path)
    module = sys.modules.get(name)
    if module is None:
        file_spec = importlib.util.spec_from_file_location(name, path)
        if file_spec is None or file_spec.loader is None:
            raise ValueError(f"device model {spec!r}: {path!r} cannot be imported as a Python module")
        module = importlib.util.module_from_spec(file_spec)
        sys.modules[name] = module  # before executing: dataclasses and pickling look the module up
        try:
            file_spec.loader.exec_module(module)
        except BaseException as exc:
            del sys.modules[name]
            if not isinstance(exc, Exception):
                raise
            where = _line_of(exc, path)
            detail = str(exc).splitlines()[0] if str(exc) else ""
            raise ValueError(
                f"device model {spec!r}: importing {path!r} failed{where}: {type(exc).__name__}"
                + (f": {detail}" if detail else "")
            ) from None
    found = getattr(module, class_name, None)
    if found is None:
        raise ValueError(f"device model {spec!r}: {path!r} has no {class_name!r}")
    if not (isinstance(found, type) and issubclass(found, DeviceBackend)):
        raise ValueError(f"device model {spec!r}: {class_name!r} is not a device model class (a DeviceBackend subclass)")
    if inspect.isabstract(found):
        raise ValueError(f"device model {spec!r}: {class_name!r} is abstract")
    return f"{name}:{class_name}"


def class_label(cls: type) -> str:
    """ "module:Class" of a class, or "PATH.py:Class" for one loaded from a model file."""
    module = sys.modules.get(cls.__module__)
    path = getattr(module, "__file__", None)
    if cls.__module__.startswith("_vfu_model_") and path:
        return f"{path}:{cls.__qualname__}"
    return f"{cls.__module__}:{cls.__qualname__}"


def _line_of(exc: BaseException, path: str) -> str:
    """" (line N)" of the innermost frame in the model file, if any."""
    if isinstance(exc, SyntaxError) and exc.lineno:
        return f" (line {exc.lineno})"
    line = None
    tb = exc.__traceback__
    target = os.path.abspath(path)
    while tb is not None:
        if os.path.abspath(tb.tb_frame.f_code.co_filename) == target:
            line = tb.tb_lineno
        tb = tb.tb_next
    return f" (line {line})" if line else ""


__all__ = ["class_label", "is_file_spec", "load_model_file", "module_name_for"]
