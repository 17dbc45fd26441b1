"""Signed module supply: package, sign, push, pull, verify, store, activate, roll back.

Modules travel as OCI artifacts in the Wasm layout, signed with cosign-compatible keys.
Nothing reaches an engine unless a trusted key signed its manifest digest and every
blob matched its digest; `Supply` keeps the current and previous version of each
module and rolls back by itself when a new version faults past its budget.
"""

from agent.supply._cli import add_supply_commands
from agent.supply._deploy import ModuleRunner, RolledBack, Supply
from agent.supply._fetch import (
    Verified,
    open_repository,
    pull,
    registry_client,
    sign_reference,
    trusted_keys,
    verify_all,
)
from agent.supply._keys import (
    PublicKey,
    decrypt_private_key,
    encrypt_private_key,
    generate_key,
    load_private_key,
    load_public_key,
    public_key_of,
)
from agent.supply._layout import LayoutRepository
from agent.supply._manifest import Capabilities, ModuleLimits, ModuleManifest, version_key
from agent.supply._oci import Reference, parse_reference
from agent.supply._package import Packaged, package, read_module_dir
from agent.supply._repo import Repository
from agent.supply._state import DesiredState, ModuleState
from agent.supply._store import InstalledModule

__all__ = [
    "Capabilities",
    "DesiredState",
    "InstalledModule",
    "LayoutRepository",
    "ModuleLimits",
    "ModuleManifest",
    "ModuleRunner",
    "ModuleState",
    "Packaged",
    "PublicKey",
    "Reference",
    "Repository",
    "RolledBack",
    "Supply",
    "Verified",
    "add_supply_commands",
    "decrypt_private_key",
    "encrypt_private_key",
    "generate_key",
    "load_private_key",
    "load_public_key",
    "open_repository",
    "package",
    "parse_reference",
    "public_key_of",
    "pull",
    "read_module_dir",
    "registry_client",
    "sign_reference",
    "trusted_keys",
    "verify_all",
    "version_key",
]
