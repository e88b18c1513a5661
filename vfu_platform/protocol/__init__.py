# SPDX-License-Identifier: BSD-3-Clause
"""The vfio-user protocol, sans I/O: message types, codec and framing.

Nothing here touches a socket or a device.  Every input gives a message or a
`ProtocolError` carrying the errno to answer with (h11's model).
"""
from vfu_platform.protocol.constants import Command, MsgFlags
from vfu_platform.protocol.errors import FramingError, ProtocolError
from vfu_platform.protocol.header import HEADER, Header

__all__ = ["Command", "MsgFlags", "FramingError", "ProtocolError", "HEADER", "Header"]
