#!/usr/bin/env python3
"""Signs requests with botocore's SigV4Auth, the signer the AWS CLI uses, and writes what a
server receives (method, path, query, headers, body) with the key and secret to sigv4.json.

Run with the AWS CLI's Python (scripts/install-tools puts it in target/tools/venv):
    target/tools/venv/bin/python auth/tests/golden/gen.py > auth/tests/golden/sigv4.json
"""
import json
import sys
from urllib.parse import urlsplit

try:
    from awscli.botocore.auth import SigV4Auth
    from awscli.botocore.awsrequest import AWSRequest
    from awscli.botocore.credentials import Credentials
except ImportError:
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

KEY = "SHOALEXAMPLEKEY00001"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
HOST = "127.0.0.1:7070"

CASES = [
    ("create mesh", "PUT", "/v20190125/meshes", '{"meshName":"colorapp","spec":{}}',
     {"Content-Type": "application/json"}),
    ("list meshes with a query", "GET", "/v20190125/meshes?limit=10&nextToken=abc%2Bdef%3D%3D", "", {}),
    ("encoded path", "DELETE",
     "/v20190125/meshes/my-mesh/virtualNodes/node%20one?meshOwner=123456789012", "", {}),
    ("empty body put", "PUT", "/v20190125/meshes/colorapp", "",
     {"Content-Type": "application/json", "User-Agent": "aws-cli/1.46.3 botocore"}),
    ("spaces in a signed header", "POST", "/v1/snapshot/restore", '{"resources":[]}',
     {"Content-Type": "application/json", "X-Shoal-Note": "  two   spaces  "}),
]


def main():
    out = []
    for name, method, path, body, headers in CASES:
        req = AWSRequest(method=method, url=f"http://{HOST}{path}", data=body.encode(),
                         headers=dict(headers))
        SigV4Auth(Credentials(KEY, SECRET), "appmesh", "us-east-1").add_auth(req)
        parts = urlsplit(req.url)
        received = [["Host", HOST]] + [[k, v] for k, v in req.headers.items()]
        # Added by the HTTP client after signing, as on the wire: not signed.
        received.append(["Content-Length", str(len(body.encode()))])
        out.append({
            "name": name,
            "method": method,
            "path": parts.path,
            "query": parts.query,
            "headers": received,
            "body": body,
            "access_key": KEY,
            "secret": SECRET,
            "amz_date": req.headers["X-Amz-Date"],
        })
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")


main()
