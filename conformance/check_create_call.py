#!/usr/bin/env python3
"""Compare OUR Calls.json request with the one the official `twilio` client sends.

Usage: check_create_call.py [OUR_BINARY] [--spec PATH]

  OUR_BINARY  path to a built `capture_create_call` example
              (default: `cargo run -q -p voxbridge-twilio --example capture_create_call --`)
  --spec      twilio-oai `twilio_api_v2010.json`
              (default: ../shared/specs/twilio_api_v2010.json relative to the repo root)

A local capturing HTTP server (CONFORMANCE.md section 1.3) answers every request with 201 and a
minimal call resource. For each variant (Url, inline Twiml):

  1. the official client, `Client(AccountSid, "secret").calls.create(...)` with
     `client.api.base_url` pointed at the server, sends its request;
  2. our example `capture_create_call BASE VARIANT` sends the same parameters;
  3. both requests must agree on method, path, Basic auth credentials, Content-Type and the
     multiset of form fields (`parse_qsl`, sorted);
  4. every field we send must be a property of `CreateCallRequest` in twilio-oai's spec, with
     array-typed keys the only repeated ones, booleans as true/false, integers as digits, enums
     respected, uri-format values absolute http(s) URLs, and exactly one of Url/Twiml/ApplicationSid.

Negative controls make sure neither comparison is vacuous. Exits 1 with a diff on any mismatch.
"""
import argparse
import base64
import json
import os
import subprocess
import sys
import threading
import urllib.parse
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Keep the SDK and our reqwest client away from any proxy / Twilio edge settings of the caller.
for var in ("TWILIO_EDGE", "TWILIO_REGION", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
            "http_proxy", "https_proxy", "all_proxy"):
    os.environ.pop(var, None)
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"

import twilio  # noqa: E402
from twilio.rest import Client  # noqa: E402

# Must match crates/twilio/examples/capture_create_call.rs.
ACCOUNT_SID = "AC" + "0" * 32
AUTH_TOKEN = "secret"
TWIML = ('<Response><Connect><Stream url="wss://voice.example.com/twilio/media">'
         '<Parameter name="call_id" value="abc &amp; def"/></Stream></Connect></Response>')
COMMON = dict(
    to="+14155550100",
    from_="+14155550199",
    status_callback="https://voice.example.com/twilio/status?call_id=abc",
    status_callback_event=["initiated", "ringing", "answered", "completed"],
    status_callback_method="POST",
    timeout=30,
    time_limit=600,
    machine_detection="Enable",
    async_amd="true",
    async_amd_status_callback="https://voice.example.com/twilio/amd?call_id=abc",
    record=True,
    recording_channels="dual",
    recording_status_callback="https://voice.example.com/twilio/recording?call_id=abc",
    recording_status_callback_event=["in-progress", "completed"],
)
VARIANTS = {
    "url": dict(COMMON, url="https://voice.example.com/twilio/voice?call_id=abc"),
    "twiml": dict(COMMON, twiml=TWIML),
}

failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL  " + msg)


def ok(msg):
    print("ok    " + msg)


# --------------------------------------------------------------------------------------------
# Capturing fake Twilio
# --------------------------------------------------------------------------------------------

captured = []
captured_lock = threading.Lock()


class FakeTwilio(BaseHTTPRequestHandler):
    def _handle(self):
        n = int(self.headers.get("Content-Length", 0) or 0)
        body = self.rfile.read(n) if n else b""
        with captured_lock:
            captured.append({"method": self.command, "path": self.path,
                             "headers": {k.lower(): v for k, v in self.headers.items()},
                             "body": body.decode()})
        sid = "CA" + "0" * 32
        resp = json.dumps({"sid": sid, "account_sid": ACCOUNT_SID, "status": "queued",
                           "to": "+14155550100", "from": "+14155550199",
                           "uri": f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls/{sid}.json"}).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(resp)))
        self.end_headers()
        self.wfile.write(resp)

    do_POST = _handle
    do_GET = _handle

    def log_message(self, *a):
        pass


def take_one(who):
    with captured_lock:
        got = list(captured)
        captured.clear()
    if len(got) != 1:
        fail(f"{who}: expected exactly 1 request, the server saw {len(got)}")
        return None
    return got[0]


def run_official(base, kwargs):
    client = Client(ACCOUNT_SID, AUTH_TOKEN)
    client.api.base_url = base
    call = client.calls.create(**kwargs)
    if call.sid != "CA" + "0" * 32:
        fail(f"official client parsed sid {call.sid!r}")
    return take_one("twilio-python")


def run_ours(base, variant, binary):
    if binary:
        cmd = [binary, base, variant]
    else:
        cmd = ["cargo", "run", "-q", "-p", "voxbridge-twilio", "--example",
               "capture_create_call", "--", base, variant]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        fail(f"ours ({variant}): {' '.join(cmd)} exited {proc.returncode}\n{proc.stdout}{proc.stderr}")
        with captured_lock:
            captured.clear()
        return None
    return take_one(f"ours ({variant})")


# --------------------------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------------------------

def basic_credentials(req):
    h = req["headers"].get("authorization", "")
    if not h.startswith("Basic "):
        return None
    return base64.b64decode(h[len("Basic "):]).decode()


def form_pairs(req):
    return sorted(urllib.parse.parse_qsl(req["body"], keep_blank_values=True, strict_parsing=True))


def compare(official, ours):
    """List of human-readable differences (empty = same request)."""
    diffs = []
    for label, get in [("method", lambda r: r["method"]),
                       ("path", lambda r: urllib.parse.urlsplit(r["path"]).path),
                       ("query string", lambda r: urllib.parse.urlsplit(r["path"]).query),
                       ("Basic auth user", lambda r: (basic_credentials(r) or "").split(":", 1)[0]),
                       ("Basic auth credentials", basic_credentials),
                       ("Content-Type", lambda r: r["headers"].get("content-type"))]:
        a, b = get(official), get(ours)
        if a != b:
            diffs.append(f"{label}: twilio-python {a!r} != ours {b!r}")
    a, b = Counter(form_pairs(official)), Counter(form_pairs(ours))
    for (k, v), n in sorted((a - b).items()):
        diffs.append(f"form: only twilio-python sends {k}={v!r}" + (f" (x{n})" if n > 1 else ""))
    for (k, v), n in sorted((b - a).items()):
        diffs.append(f"form: only ours sends {k}={v!r}" + (f" (x{n})" if n > 1 else ""))
    return diffs


# --------------------------------------------------------------------------------------------
# CreateCallRequest schema check (CONFORMANCE.md section 4)
# --------------------------------------------------------------------------------------------

def load_schema(spec_path):
    spec = json.load(open(spec_path, encoding="utf-8"))
    op = spec["paths"]["/2010-04-01/Accounts/{AccountSid}/Calls.json"]["post"]
    schema = op["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"]
    if schema.get("title") != "CreateCallRequest":
        fail(f"spec: Calls.json POST body schema is titled {schema.get('title')!r}, not CreateCallRequest")
    return schema


def check_form(schema, pairs):
    props, required = schema["properties"], schema.get("required", [])
    errors, seen = [], {}
    for k, v in pairs:
        seen.setdefault(k, []).append(v)
    for r in required:
        if r not in seen:
            errors.append(f"missing required {r}")
    n = sum(k in seen for k in ("Url", "Twiml", "ApplicationSid"))
    if n != 1:
        errors.append(f"need exactly one of Url/Twiml/ApplicationSid, got {n}")
    for k, vals in seen.items():
        p = props.get(k)
        if p is None:
            errors.append(f"unknown parameter {k} (not a property of CreateCallRequest)")
            continue
        if p.get("type") != "array" and len(vals) > 1:
            errors.append(f"{k} repeated but not an array")
        for v in vals:
            t = p.get("items", {}).get("type") if p.get("type") == "array" else p.get("type")
            if t == "boolean" and v not in ("true", "false"):
                errors.append(f"{k}={v!r} not true/false")
            if t == "integer" and not v.lstrip("-").isdigit():
                errors.append(f"{k}={v!r} not integer")
            if "enum" in p and v not in p["enum"]:
                errors.append(f"{k}={v!r} not in {p['enum']}")
            if p.get("format") == "uri" and urllib.parse.urlsplit(v).scheme not in ("http", "https"):
                errors.append(f"{k}={v!r} not absolute http(s) URL")
    return errors


# --------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("binary", nargs="?", help="built capture_create_call example (default: cargo run)")
    ap.add_argument("--spec", default=str(REPO / "../shared/specs/twilio_api_v2010.json"))
    args = ap.parse_args()
    binary = str(Path(args.binary).resolve()) if args.binary else None

    print(f"twilio-python {twilio.__version__}; spec {os.path.normpath(args.spec)}")
    schema = load_schema(args.spec)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), FakeTwilio)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        for variant, kwargs in VARIANTS.items():
            official = run_official(base, kwargs)
            ours = run_ours(base, variant, binary)
            if official is None or ours is None:
                continue
            diffs = compare(official, ours)
            label = f"[{variant}] {ours['method']} {ours['path']}"
            if diffs:
                fail(f"{label}: requests differ\n      " + "\n      ".join(diffs)
                     + f"\n      twilio-python body: {official['body']}\n      ours body:          {ours['body']}")
            else:
                ok(f"{label}: same method, path, Basic user {basic_credentials(ours).split(':')[0]}, "
                   f"Content-Type {ours['headers'].get('content-type')!r}, "
                   f"{len(form_pairs(ours))} form fields")
            for who, req in (("twilio-python", official), ("ours", ours)):
                errs = check_form(schema, form_pairs(req))
                if errs:
                    fail(f"[{variant}] {who} body vs CreateCallRequest: " + "; ".join(errs))
                else:
                    keys = sorted({k for k, _ in form_pairs(req)})
                    ok(f"[{variant}] {who} body valid against CreateCallRequest ({len(keys)} keys)")
            if variant == "url":
                print("      fields: " + ", ".join(f"{k}={v}" for k, v in form_pairs(ours)))

            if diffs:
                continue
            # Negative controls (on a matching pair): a dropped repeated key, a joined list, a
            # capitalised boolean and a wrong auth user must all be reported; an unknown key must
            # fail the schema check.
            mutants = {
                "dropped StatusCallbackEvent": ours["body"].replace("&StatusCallbackEvent=ringing", "", 1),
                "joined StatusCallbackEvent": ours["body"].replace(
                    "StatusCallbackEvent=initiated&StatusCallbackEvent=ringing",
                    "StatusCallbackEvent=initiated+ringing", 1),
                "Record=True": ours["body"].replace("Record=true", "Record=True", 1),
            }
            for name, body in mutants.items():
                if body == ours["body"] or not compare(official, dict(ours, body=body)):
                    fail(f"[{variant}] negative control not detected: {name}")
            wrong_user = dict(ours, headers=dict(ours["headers"], authorization="Basic " +
                              base64.b64encode(b"AC1:secret").decode()))
            if not compare(official, wrong_user):
                fail(f"[{variant}] negative control not detected: wrong Basic user")
            if not check_form(schema, form_pairs(ours) + [("RecordingChannel", "dual")]):
                fail(f"[{variant}] negative control not detected: unknown key RecordingChannel")
        if not any("negative control" in f for f in failures):
            ok("negative controls (dropped/joined list value, Record=True, wrong user, unknown key) detected")
    finally:
        srv.shutdown()

    if failures:
        print(f"\n{len(failures)} failure(s)")
        sys.exit(1)
    print("\nall checks passed")


if __name__ == "__main__":
    main()
