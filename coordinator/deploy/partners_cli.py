"""`oda coordinator invite|enrolments|approve-enrolment|revoke|publish-agent`: partners' keys and
the node agent they install, without a key or a file sent by hand."""

from __future__ import annotations

import argparse
import hashlib
import shutil
import time
from pathlib import Path

from coordinator.deploy.enrolment import Enrolments
from privacy.enrolment_code import DIST_PATH
from privacy.errors import ConfigError
from privacy.exit_codes import ExitCode

__all__ = ["PARTNER_ACTIONS", "add_partner_parsers", "partners_main"]

PARTNER_ACTIONS = ("invite", "enrolments", "approve-enrolment", "revoke", "publish-agent")


def add_partner_parsers(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    invite = actions.add_parser(
        "invite", help="print a one-time enrolment code for a partner (`oda-node enrol CODE`)"
    )
    invite.add_argument("dir", type=Path)
    invite.add_argument("partner", help="the partner's name (its node is registered under it)")
    invite.add_argument("--expires-hours", type=float, default=72.0, help="lifetime of the code (default 72)")
    invite.add_argument(
        "--approval", action="store_true", help="hold the enrolment until `oda coordinator approve-enrolment`"
    )
    listing = actions.add_parser("enrolments", help="enrolments and key rotations, and their state")
    listing.add_argument("dir", type=Path)
    approve = actions.add_parser("approve-enrolment", help="approve an enrolment that awaits approval")
    approve.add_argument("dir", type=Path)
    approve.add_argument("request_id", help="the id `oda coordinator enrolments` shows")
    revoke = actions.add_parser(
        "revoke", help="revoke every key of a partner: its node can no longer connect"
    )
    revoke.add_argument("dir", type=Path)
    revoke.add_argument("partner")
    publish = actions.add_parser(
        "publish-agent", help="serve a node-agent wheel (or sdist) to partners at https://FLEET/v1/oda/dist/"
    )
    publish.add_argument("dir", type=Path)
    publish.add_argument("files", type=Path, nargs="+", help="built by `python -m build`")


def partners_main(args: argparse.Namespace) -> int:
    from coordinator.deploy.config import load_coordinator

    folder: Path = args.dir
    config = load_coordinator(folder)
    if args.action == "publish-agent":
        return _publish(folder, config.fleet_address, args.files)
    if args.action == "revoke":
        return _revoke(folder, args.partner)
    enrolments = Enrolments(folder)
    try:
        if args.action == "invite":
            ca = (folder / "pki" / "ca.crt").read_bytes()
            code = enrolments.invite(
                args.partner, config.fleet_address, ca, args.expires_hours, args.approval
            )
            expiry = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(code.expires))
            print(f"enrolment code for {args.partner} (one use, expires {expiry}):")
            print(f"  {code}")
            print(f"the partner runs: oda-node enrol {str(code)[:12]}...   (the whole code)")
            print(f"it pins the CA with SHA-256 fingerprint {code.ca_sha256}")
            if args.approval:
                print("you approve the enrolment with `oda coordinator approve-enrolment` once it arrives")
        elif args.action == "approve-enrolment":
            enrolments.approve(args.request_id)
            print(f"approved {args.request_id}: the running coordinator registers the key within a second")
        else:
            rows = enrolments.requests()
            if not rows:
                print("no enrolments yet: `oda coordinator invite DIR PARTNER` makes a code")
            for row in rows:
                when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(row["created"]))
                node = f" node {row['node_id']}" if row["node_id"] is not None else ""
                message = f": {row['message']}" if row["message"] else ""
                print(
                    f"{row['id']}  {row['kind']:<6}  {row['partner']:<16}  {row['status']}{node}  {when}{message}"
                )
    finally:
        enrolments.close()
    return ExitCode.OK


def _revoke(folder: Path, partner: str) -> int:
    from coordinator.deploy.service import coordinator_link

    link = coordinator_link(folder)
    try:
        ids = [n.node_id for n in link.list_nodes() if n.name == partner and n.status != "unregistered"]
        if not ids:
            raise ConfigError(
                f"no registered key for partner {partner!r}: see `oda coordinator nodes {folder}`"
            )
        for node_id in ids:
            link.unregister_node(node_id)
        print(f"revoked {partner}: node(s) {', '.join(map(str, ids))} can no longer connect")
    finally:
        link.close()
    return ExitCode.OK


def _publish(folder: Path, address: str, files: list[Path]) -> int:
    dist = folder / "dist"
    dist.mkdir(exist_ok=True)
    for file in files:
        if not file.is_file() or not (file.name.endswith(".whl") or file.name.endswith(".tar.gz")):
            raise ConfigError(f"{file}: not a built wheel or sdist (`python -m build` writes them in dist/)")
        shutil.copyfile(file, dist / file.name)
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        print(f"serving {file.name} (sha256 {digest}); a partner installs it with:")
        print(
            f"  curl -k https://{address}/v1/oda/ca.crt -o ca.crt   # compare its fingerprint with the code's"
        )
        print(f"  pip install --cert ca.crt 'https://{address}{DIST_PATH}/{file.name}#sha256={digest}'")
    return ExitCode.OK
