"""Framed serial protocol to microcontrollers: a pure codec, typed messages, and a supervised pyserial link.

The C side in firmware_bridge/c/ implements the same protocol byte for byte; firmware_bridge/vectors/ holds the
shared test vectors both sides reproduce. Protocol: docs/firmware_bridge.md.
"""

from .codec import (DEFAULT_MAX_PAYLOAD, VERSION, DecoderStats, Frame, FrameDecoder, cobs_decode, cobs_encode,
                    crc16, encode_frame)
from .link import LinkError, SerialLink, resolve_port
from .messages import (MESSAGES, Ack, Action, Command, Config, Heartbeat, Hello, Imu, Latent, Log, Message,
                       Prediction, Proprio, Surprise, TimeSync, decode_message)

__all__ = ["DEFAULT_MAX_PAYLOAD", "MESSAGES", "VERSION", "Ack", "Action", "Command", "Config", "DecoderStats",
           "Frame", "FrameDecoder", "Heartbeat", "Hello", "Imu", "Latent", "LinkError", "Log", "Message", "Prediction",
           "Proprio", "SerialLink", "Surprise", "TimeSync", "cobs_decode", "cobs_encode", "crc16", "decode_message",
           "encode_frame", "resolve_port"]
