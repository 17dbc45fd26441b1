"""MQTT: the broker link that drains the durable outbox, subscriptions, the embedded broker.

Only this package imports aiomqtt, paho-mqtt and amqtt. Another package that keeps a
connection of its own (Sparkplug) gets its client from `new_client`, its endpoints from
`Rotation`, and names the client, its will and its error by the aliases below.
"""

import aiomqtt

from agent.mqtt._client import new_client, probe_broker, probe_brokers, subscribe
from agent.mqtt._embedded import EmbeddedBroker
from agent.mqtt._endpoints import Rotation, describe
from agent.mqtt._link import Handler, Incoming, MqttLink
from agent.mqtt._retained import BrokerSession, Subscription
from agent.mqtt._watch import watch

Client = aiomqtt.Client
MqttError = aiomqtt.MqttError
"""What a lost or refused connection raises."""
Will = aiomqtt.Will

__all__ = [
    "BrokerSession",
    "Client",
    "EmbeddedBroker",
    "Handler",
    "Incoming",
    "MqttError",
    "MqttLink",
    "Rotation",
    "Subscription",
    "Will",
    "describe",
    "new_client",
    "probe_broker",
    "probe_brokers",
    "subscribe",
    "watch",
]
