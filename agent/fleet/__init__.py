"""Fleets over MQTT alone: groups, retained desired state, node reports, staged rollouts.

`_documents` is the contract the node and the operator's tool share; the node side
(following desired state, publishing its report) lives in `agent.runtime`, the
operator's side (`edge-agent fleet`) here: `FleetView` reads the retained state,
`Rollout` is a staged rollout's transitions, `drive` its loop over a `BrokerSession`.
"""

from agent.fleet._cli import add_fleet_command
from agent.fleet._documents import (
    MAX_DOCUMENT_BYTES,
    DesiredDocument,
    DesiredModule,
    Report,
    ReportDevice,
    ReportModule,
    ReportWanted,
    Wanted,
    desired_payload,
    desired_topic,
    merge,
    parse_desired,
    parse_report,
    report_topic,
    rollout_topic,
    status_topic,
)
from agent.fleet._driver import drive, watched_topics
from agent.fleet._edit import Edit, Signer
from agent.fleet._progress import NodeProgress, RolloutDocument, parse_rollout
from agent.fleet._rollout import Rollout, RolloutPlan
from agent.fleet._view import FleetView, NodeView
from agent.fleet._waves import module_name, parse_waves, repository, wave_sizes

__all__ = [
    "MAX_DOCUMENT_BYTES",
    "DesiredDocument",
    "DesiredModule",
    "Edit",
    "FleetView",
    "NodeProgress",
    "NodeView",
    "Report",
    "ReportDevice",
    "ReportModule",
    "ReportWanted",
    "Rollout",
    "RolloutDocument",
    "RolloutPlan",
    "Signer",
    "Wanted",
    "add_fleet_command",
    "desired_payload",
    "desired_topic",
    "drive",
    "merge",
    "module_name",
    "parse_desired",
    "parse_report",
    "parse_rollout",
    "parse_waves",
    "report_topic",
    "repository",
    "rollout_topic",
    "status_topic",
    "watched_topics",
    "wave_sizes",
]
