"""Local policy over a module's manifest: checked before the code or models download.

A capability outside policy refuses the whole module; the error names the capability
and what policy allows, so an operator can fix one side or the other.
"""

from __future__ import annotations

from agent.config import PolicyConfig
from agent.errors import PolicyViolation
from agent.supply._manifest import ModuleManifest
from agent.supply._oci import MODEL_LAYER, TITLE, Manifest
from agent.topics import covers


def check_policy(module: ModuleManifest, oci: Manifest, policy: PolicyConfig) -> None:
    name = f"module {module.name!r} {module.version}"
    for f in module.capabilities.emit:
        if not any(covers(a, f) for a in policy.emit):
            raise PolicyViolation(f"{name}: emit {f!r} is outside policy.emit {list(policy.emit)}")
    _check_models(name, module, oci, policy)
    _check_wasi(name, module, policy)
    _check_limits(name, module, policy)


def _check_models(name: str, module: ModuleManifest, oci: Manifest, policy: PolicyConfig) -> None:
    caps = module.capabilities
    models = {d.annotations.get(TITLE, ""): d for d in oci.layers if d.media_type == MODEL_LAYER}
    if set(models) != set(caps.models):
        raise PolicyViolation(
            f"{name}: capabilities.models {sorted(caps.models)} do not match the model layers "
            f"{sorted(models)}"
        )
    if models and not policy.models:
        raise PolicyViolation(f"{name}: ships models {sorted(models)} but policy.models is false")
    for title, layer in models.items():
        if layer.size > policy.max_model_bytes:
            raise PolicyViolation(
                f"{name}: model {title!r} is {layer.size} bytes, over policy.max_model_bytes "
                f"{policy.max_model_bytes}"
            )


def _check_wasi(name: str, module: ModuleManifest, policy: PolicyConfig) -> None:
    caps = module.capabilities
    for d in caps.wasi_dirs:
        if d.guest not in policy.wasi_dirs:
            raise PolicyViolation(
                f"{name}: wasi_dirs {d.guest!r} is not in policy.wasi_dirs {list(policy.wasi_dirs)}"
            )
        if d.writable and not policy.wasi_writable:
            raise PolicyViolation(f"{name}: wasi_dirs {d.guest!r} writable, policy forbids")
    for env in caps.wasi_env:
        if env not in policy.wasi_env:
            raise PolicyViolation(
                f"{name}: wasi_env {env!r} is not in policy.wasi_env {list(policy.wasi_env)}"
            )


def _check_limits(name: str, module: ModuleManifest, policy: PolicyConfig) -> None:
    limits = module.limits
    if limits.memory_pages > policy.max_memory_pages:
        raise PolicyViolation(
            f"{name}: limits.memory_pages {limits.memory_pages} is over policy.max_memory_pages "
            f"{policy.max_memory_pages}"
        )
    if limits.deadline_ms is None or limits.deadline_ms > policy.max_deadline_ms:
        raise PolicyViolation(
            f"{name}: limits.deadline_ms {limits.deadline_ms} is over policy.max_deadline_ms "
            f"{policy.max_deadline_ms}"
        )
