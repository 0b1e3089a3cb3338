#!/usr/bin/env python3
"""A small fake Kubernetes API server for the source-update poller's tests.

Serves one DataImportCron over HTTPS on 127.0.0.1 (GET), applies JSON Patch
`add` operations to it (PATCH with application/json-patch+json), and records
every request (method, path, content type, whether the bearer token matched,
body) as one JSON line in --log. Anything else is answered 404 or 415, as the
API server would. Prints PORT=<port> once listening; stops on SIGTERM.
"""
import argparse
import http.server
import json
import signal
import ssl
import sys
import threading


def unescape(token):
    return token.replace("~1", "/").replace("~0", "~")


def apply_patch(obj, ops):
    for op in ops:
        if op.get("op") != "add":
            raise ValueError("only add is supported here: %r" % op)
        parts = [unescape(p) for p in op["path"].split("/")[1:]]
        target = obj
        for part in parts[:-1]:
            if part not in target:
                raise KeyError("missing parent %s in %s" % (part, op["path"]))
            target = target[part]
        target[parts[-1]] = op["value"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--namespace", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--cron", required=True, help="JSON file: the DataImportCron")
    ap.add_argument("--log", required=True)
    args = ap.parse_args()

    with open(args.cron) as f:
        cron = json.load(f)
    path = "/apis/cdi.kubevirt.io/v1beta1/namespaces/%s/dataimportcrons/%s" % (
        args.namespace, args.name)
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def record(self, body):
            entry = {
                "method": self.command,
                "path": self.path,
                "content_type": self.headers.get("Content-Type", ""),
                "token_ok": self.headers.get("Authorization", "") == "Bearer " + args.token,
                "body": body,
            }
            with lock, open(args.log, "a") as f:
                f.write(json.dumps(entry) + "\n")

        def answer(self, code, obj):
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self.record(None)
            if self.headers.get("Authorization", "") != "Bearer " + args.token:
                return self.answer(401, {"kind": "Status", "message": "Unauthorized"})
            if self.path != path:
                return self.answer(404, {"kind": "Status", "message": "not found"})
            with lock:
                self.answer(200, cron)

        def do_PATCH(self):
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length).decode()
            self.record(body)
            if self.headers.get("Authorization", "") != "Bearer " + args.token:
                return self.answer(401, {"kind": "Status", "message": "Unauthorized"})
            if self.path != path:
                return self.answer(404, {"kind": "Status", "message": "not found"})
            if self.headers.get("Content-Type") != "application/json-patch+json":
                return self.answer(415, {"kind": "Status", "message": "unsupported patch type"})
            try:
                with lock:
                    apply_patch(cron, json.loads(body))
            except (ValueError, KeyError) as e:
                return self.answer(422, {"kind": "Status", "message": str(e)})
            with lock:
                self.answer(200, cron)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    signal.signal(signal.SIGTERM, lambda *a: threading.Thread(target=server.shutdown).start())
    print("PORT=%d" % server.server_address[1], flush=True)
    server.serve_forever()
    sys.exit(0)


if __name__ == "__main__":
    main()
