"""The supply commands: `key generate` and `module package|push|sign|verify|pull`."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from agent.config import AgentConfig, load_config
from agent.errors import KeyFileError, SupplyError
from agent.supply._copy import copy_artifact
from agent.supply._fetch import open_repository, pull, sign_reference, trusted_keys, verify_all
from agent.supply._keys import encrypt_private_key, generate_key, load_private_key, public_key_of
from agent.supply._oci import parse_reference
from agent.supply._package import package
from agent.supply._store import ContentStore

_Sub = "argparse._SubParsersAction[argparse.ArgumentParser]"


def add_supply_commands(commands: Any, module: Any) -> None:
    """Add the supply commands to the top-level and `module` sub-command parsers."""
    key = commands.add_parser("key", help="cosign-compatible signing keys").add_subparsers(
        title="key commands", metavar="COMMAND"
    )
    gen = key.add_parser(
        "generate",
        help="write cosign.key (encrypted) and cosign.pub",
        description="Password from COSIGN_PASSWORD, else prompted.",
    )
    gen.add_argument("--output-prefix", default="cosign", metavar="PREFIX")
    gen.set_defaults(handler=_key_generate)

    pkg = module.add_parser("package", help="package a module directory as an OCI layout")
    pkg.add_argument("directory", type=Path, metavar="DIR")
    pkg.add_argument("--output", type=Path, help="layout directory (default: DIR/oci)")
    pkg.add_argument("--tag", help="tag in the layout (default: the module's version)")
    pkg.set_defaults(handler=_package)

    push = module.add_parser("push", help="copy a packaged module to a registry")
    push.add_argument("source", metavar="SRC", help="oci:DIR:TAG or a registry reference")
    push.add_argument("target", metavar="REF", help="REGISTRY/REPO:TAG")
    _config_arg(push)
    push.set_defaults(handler=_push)

    sig = module.add_parser("sign", help="sign a module with a cosign key")
    sig.add_argument("ref", metavar="REF")
    sig.add_argument("--key", type=Path, required=True, metavar="cosign.key")
    sig.add_argument("--legacy", action="store_true", help="the cosign 2 .sig tag format")
    _config_arg(sig)
    sig.set_defaults(handler=_sign)

    ver = module.add_parser("verify", help="check a module's signature and every blob")
    ver.add_argument("ref", metavar="REF")
    _keys_arg(ver)
    _config_arg(ver)
    ver.set_defaults(handler=_verify)

    get = module.add_parser("pull", help="verify and store a module under the state directory")
    get.add_argument("ref", metavar="REF")
    _keys_arg(get)
    _config_arg(get)
    get.set_defaults(handler=_pull)


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="agent config (registries, auth, policy)")


def _keys_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--key",
        type=Path,
        action="append",
        default=[],
        metavar="cosign.pub",
        help="trusted key (repeatable); default: supply.trusted_keys of --config",
    )


def _config(args: argparse.Namespace) -> AgentConfig:
    return load_config(args.config) if args.config else AgentConfig()


def _run(coro: Coroutine[Any, Any, int]) -> int:
    return asyncio.run(coro)


def _password(confirm: bool) -> bytes:
    if "COSIGN_PASSWORD" in os.environ:
        return os.environ["COSIGN_PASSWORD"].encode()
    first = getpass.getpass("Enter password for private key: ")
    if confirm and getpass.getpass("Enter password for private key again: ") != first:
        raise KeyFileError("the passwords do not match")
    return first.encode()


def _key_generate(args: argparse.Namespace) -> int:
    key_path, pub_path = Path(f"{args.output_prefix}.key"), Path(f"{args.output_prefix}.pub")
    for path in (key_path, pub_path):
        if path.exists():
            raise KeyFileError(f"{path} exists; refusing to overwrite a key")
    private = generate_key()
    key_path.write_bytes(encrypt_private_key(private, _password(confirm=True)))
    key_path.chmod(0o600)
    pub_path.write_bytes(public_key_of(private, str(pub_path)).pem())
    print(f"Private key written to {key_path}\nPublic key written to {pub_path}")
    return 0


def _package(args: argparse.Namespace) -> int:
    output = args.output or args.directory / "oci"
    packaged = asyncio.run(package(args.directory, output, args.tag))
    print(f"oci:{packaged.layout}:{packaged.tag}@{packaged.digest}")
    return 0


def _push(args: argparse.Namespace) -> int:
    async def go() -> int:
        config = _config(args).supply
        src_ref, dst_ref = parse_reference(args.source), parse_reference(args.target)
        if dst_ref.tag is None:
            raise SupplyError(f"{args.target}: push needs a tag")
        source, target = open_repository(src_ref, config), open_repository(dst_ref, config)
        try:
            fetched = await copy_artifact(source, src_ref, target, dst_ref.tag)
        finally:
            await source.aclose()
            await target.aclose()
        print(f"{dst_ref}@{fetched.digest}")
        return 0

    return _run(go())


def _sign(args: argparse.Namespace) -> int:
    private = load_private_key(args.key, _password(confirm=False))

    async def go() -> int:
        ref = parse_reference(args.ref)
        digest, where = await sign_reference(ref, private, _config(args).supply, legacy=args.legacy)
        print(f"signed {ref.repository}@{digest} ({where})")
        return 0

    return _run(go())


def _verify(args: argparse.Namespace) -> int:
    async def go() -> int:
        config = _config(args).supply
        keys = trusted_keys(tuple(args.key) or config.trusted_keys)
        ref = parse_reference(args.ref)
        repo = open_repository(ref, config)
        try:
            verified = await verify_all(repo, ref, keys)
        finally:
            await repo.aclose()
        module = verified.module
        print(
            f"verified {repo.name}@{verified.digest}: {module.name} {module.version}, "
            f"signed by {verified.key.source}, {len(verified.manifest.layers)} layers intact"
        )
        return 0

    return _run(go())


def _pull(args: argparse.Namespace) -> int:
    async def go() -> int:
        config = _config(args)
        keys = trusted_keys(tuple(args.key) or config.supply.trusted_keys)
        ref = parse_reference(args.ref)
        repo = open_repository(ref, config.supply)
        store = ContentStore(config.node.state_dir / "supply")
        try:
            installed = await pull(repo, ref, keys, store, config.supply.policy)
        finally:
            await repo.aclose()
        doc = {
            "name": installed.name,
            "version": installed.version,
            "digest": installed.digest,
            "wasm": str(installed.wasm_path),
            "models": {k: str(v) for k, v in installed.models.items()},
        }
        sys.stdout.write(json.dumps(doc) + "\n")
        return 0

    return _run(go())
