"""``python -m localenv start|stop|status --dir DIR``: the local environment from a shell."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from localenv.env import LocalEnv, _alive


def main() -> int:
    parser = argparse.ArgumentParser(prog="localenv", description=__doc__)
    parser.add_argument("command", choices=["start", "stop", "status"])
    parser.add_argument("--dir", type=Path, default=Path(".localenv"))
    parser.add_argument("--token-lifetime", type=float, default=3600)
    args = parser.parse_args()
    root: Path = args.dir.resolve()
    if args.command == "start":
        if (root / "env.json").exists():
            LocalEnv.load(root).stop()
        env = LocalEnv.start(root, token_lifetime=args.token_lifetime)
        env._procs.clear()  # they outlive this command; `stop` ends them by PID
        info = env.info
        print(f"local environment running; description in {root / 'env.json'}")
        print(f"  IMAPS              127.0.0.1:{info.imap_port} (CA {info.ca_file})")
        print(f"  identity platform  {info.authority_host}/<tenant>")
        for tenant in info.tenants:
            print(
                f"  tenant {tenant.name}: tenant_id={tenant.tenant_id} client_id={tenant.client_id}"
            )
        print(f"  pids               {info.pids}")
        return 0
    if not (root / "env.json").exists():
        print(f"no environment in {root}", file=sys.stderr)
        return 0 if args.command == "stop" else 1
    env = LocalEnv.load(root)
    if args.command == "stop":
        env.stop()
        print("local environment stopped")
        return 0
    status = {name: _alive(pid) for name, pid in env.info.pids.items()}
    print(json.dumps(status))
    return 0 if status and all(status.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
