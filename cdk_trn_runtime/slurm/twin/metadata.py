"""Instance metadata double: IMDSv2 at 169.254.169.254 inside one twin instance's network
namespace (the root namespace's 169.254.169.254 is never touched).

    python3 -m cdk_trn_runtime.slurm.twin.metadata --instance-id i-... --address 10.1.2.3

Answers ``PUT /latest/api/token`` and, with that token, ``/latest/meta-data/`` ``instance-id``,
``local-ipv4``, ``hostname``, ``placement/availability-zone`` and
``iam/security-credentials/[<role>]`` (credentials that are marked as the twin's and open
nothing). A request without a valid token gets 401, as IMDSv2 with ``HttpTokens=required``.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ADDRESS = "169.254.169.254"
ROLE = "twin-instance-role"


def make_handler(values: dict[str, str]) -> type[BaseHTTPRequestHandler]:
    tokens: set[str] = set()

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: str) -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_PUT(self) -> None:  # noqa: N802 (http.server's name)
            if self.path != "/latest/api/token" or not self.headers.get(
                "X-aws-ec2-metadata-token-ttl-seconds"
            ):
                self._send(400, "")
                return
            token = secrets.token_urlsafe(32)
            tokens.add(token)
            self._send(200, token)

        def do_GET(self) -> None:  # noqa: N802
            if self.headers.get("X-aws-ec2-metadata-token") not in tokens:
                self._send(401, "")
                return
            prefix = "/latest/meta-data/"
            key = self.path[len(prefix) :] if self.path.startswith(prefix) else None
            if key in values:
                self._send(200, values[key])
            else:
                self._send(404, "")

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            return

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m cdk_trn_runtime.slurm.twin.metadata")
    parser.add_argument("--instance-id", required=True)
    parser.add_argument("--address", required=True)
    parser.add_argument("--availability-zone", default="twin-local-1a")
    parser.add_argument("--port", type=int, default=80)
    args = parser.parse_args(argv)
    credentials = {
        "Code": "Success",
        "Type": "AWS-HMAC",
        "AccessKeyId": "TWINDOUBLEACCESSKEY",
        "SecretAccessKey": "twin-double-opens-nothing",
        "Token": "twin-double",
        "Expiration": "2099-01-01T00:00:00Z",
    }
    values = {
        "instance-id": args.instance_id,
        "local-ipv4": args.address,
        "hostname": "ip-" + args.address.replace(".", "-"),
        "placement/availability-zone": args.availability_zone,
        "iam/security-credentials/": ROLE,
        f"iam/security-credentials/{ROLE}": json.dumps(credentials),
    }
    server = ThreadingHTTPServer((ADDRESS, args.port), make_handler(values))
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
