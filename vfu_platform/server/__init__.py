# SPDX-License-Identifier: BSD-3-Clause
"""The server side: event loop, per-connection session, and the listener."""
