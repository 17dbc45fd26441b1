"""Sparkplug B northbound: the agent as a Sparkplug edge node, its devices as Sparkplug
devices, on an MQTT session of its own beside the JSON link.

`sparkplug_b.proto` is Eclipse Tahu's schema (EPL-2.0); `sparkplug_b_pb2.py` and its
stub are generated from it by `scripts/make-sparkplug-proto` and committed.
"""

from agent.sparkplug._node import CONSUMER, Devices, OnReading, SparkplugNode
from agent.sparkplug._payload import datatype_of

__all__ = ["CONSUMER", "Devices", "OnReading", "SparkplugNode", "datatype_of"]
