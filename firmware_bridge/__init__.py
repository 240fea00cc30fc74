"""Framed serial protocol to microcontrollers (see the firmware bridge issue)."""
