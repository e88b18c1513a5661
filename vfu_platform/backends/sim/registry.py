# SPDX-License-Identifier: BSD-3-Clause
"""Find a device model by name and build it from an options dict.

Names are the built-in models ("edu", "gpio") or "package.module:ClassName"
for a user's own `DeviceBackend` subclass.  Options are the class's keyword
arguments.  They often come from a command line as strings, so a string is
converted to the parameter's annotated type when that is int (base prefixes
allowed: "0x1000"), float or bool ("1/0", "true/false", "yes/no", "on/off").
Every failure is a ValueError with a one-line message.
"""

from __future__ import annotations

import importlib
import inspect
import typing
from collections.abc import Mapping

from vfu_platform.backends.base import DeviceBackend
from vfu_platform.backends.sim.edu import EduDevice
from vfu_platform.backends.sim.dw_apb_uart import DwApbUartDevice
from vfu_platform.backends.sim.gpio import GpioDevice
from vfu_platform.backends.sim.pl011 import Pl011Device
from vfu_platform.backends.sim.pl031 import Pl031Device
from vfu_platform.backends.sim.pl061 import Pl061Device

MODELS: dict[str, type[DeviceBackend]] = {"edu": EduDevice, "gpio": GpioDevice}
MODELS["pl011"] = Pl011Device
MODELS["dw-apb-uart"] = DwApbUartDevice
MODELS["pl031"] = Pl031Device
MODELS["pl061"] = Pl061Device

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def known_models() -> tuple[str, ...]:
    return tuple(sorted(MODELS))


def create_model(name: str, options: Mapping[str, object] | None = None) -> DeviceBackend:
    """Build model `name` with `options`; ValueError says what is wrong."""
    cls = resolve_model(name)
    kwargs = _convert_options(name, cls, dict(options or {}))
    return cls(**kwargs)


def resolve_model(name: str) -> type[DeviceBackend]:
    """The class for a built-in name or "package.module:ClassName"."""
    cls = MODELS.get(name)
    if cls is not None:
        return cls
    module_name, colon, class_name = name.partition(":")
    if not colon:
        raise ValueError(
            f"unknown device model {name!r}; known models: {', '.join(known_models())} "
            "(or package.module:ClassName for your own)"
        )
    if not module_name or not class_name:
        raise ValueError(f"device model {name!r}: expected package.module:ClassName")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"device model {name!r}: cannot import {module_name!r}: {exc}") from exc
    found = getattr(module, class_name, None)
    if not (isinstance(found, type) and issubclass(found, DeviceBackend)):
        raise ValueError(f"device model {name!r}: {class_name!r} is not a DeviceBackend subclass")
    if inspect.isabstract(found):
        raise ValueError(f"device model {name!r}: {class_name!r} is abstract")
    return found


def _convert_options(
    name: str, cls: type[DeviceBackend], options: dict[str, object]
) -> dict[str, object]:
    signature = inspect.signature(cls)
    parameters = signature.parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # unresolvable annotations: take the values as they are
        hints = {}
    accepted = [
        p for p, param in parameters.items() if param.kind is not inspect.Parameter.VAR_KEYWORD
    ]
    converted: dict[str, object] = {}
    for key, value in options.items():
        if key not in parameters and not takes_any:
            raise ValueError(
                f"device model {name!r} has no option {key!r} "
                f"(options: {', '.join(accepted) or 'none'})"
            )
        converted[key] = _convert(name, key, value, hints.get(key))
    try:
        signature.bind(**converted)
    except TypeError as exc:
        raise ValueError(f"device model {name!r}: {exc}") from exc
    return converted


def _convert(name: str, key: str, value: object, hint: object) -> object:
    optional = typing.get_args(hint)  # `int | None` converts as int
    if len(optional) == 2 and type(None) in optional:
        hint = next(arg for arg in optional if arg is not type(None))
    if not isinstance(value, str) or hint not in (int, float, bool):
        return value
    text = value.strip()
    try:
        if hint is bool:
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise ValueError(text)
        if hint is int:
            return int(text, 0)
        return float(text)
    except ValueError:
        raise ValueError(
            f"device model {name!r}: option {key}={value!r} is not a valid {hint.__name__}"
        ) from None
