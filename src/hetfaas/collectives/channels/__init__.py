"""Channels by URI scheme: file, tcp, redis, s3, mpi (each imported when first used)."""

from .base import (
    Channel,
    DirectChannel,
    MediatedChannel,
    NativeChannel,
    channel_class,
    known_schemes,
    open_channel,
    register_channel,
)

__all__ = [
    "Channel",
    "DirectChannel",
    "MediatedChannel",
    "NativeChannel",
    "channel_class",
    "known_schemes",
    "open_channel",
    "register_channel",
]
