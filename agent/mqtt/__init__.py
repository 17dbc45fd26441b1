"""MQTT: the broker link that drains the durable outbox, subscriptions, the embedded broker.

Only this package imports aiomqtt, paho-mqtt and amqtt.
"""

from agent.mqtt._client import new_client, probe_broker
from agent.mqtt._embedded import EmbeddedBroker
from agent.mqtt._link import Handler, Incoming, MqttLink
from agent.mqtt._watch import watch

__all__ = [
    "EmbeddedBroker",
    "Handler",
    "Incoming",
    "MqttLink",
    "new_client",
    "probe_broker",
    "watch",
]
