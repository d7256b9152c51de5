#!/usr/bin/env python3
"""Check Twilio vectors produced by OUR Rust code against the official `twilio` package.

Usage: check_twilio.py VECTORS.json

VECTORS.json is what `cargo run -q -p voxbridge-twilio --example conformance_vectors` prints:

  {"signatures":  [{"token", "url", "params": [[k, v], ...], "signature"}, ...],
   "json_bodies": [{"token", "url", "body", "signature"}, ...],
   "twiml":       [{"input": {"url", "parameters", "say", "status_callback"}, "xml"}, ...],
   "dial":        [{"input": {"say", "caller_id", "timeout", "kind", "to", ...}, "xml"}, ...]}

Oracles (not written by us):
  * twilio.request_validator.RequestValidator  - compute_signature / validate / compute_hash
  * twilio.twiml.voice_response.VoiceResponse  - <Connect><Stream><Parameter> rendering, and the
    <Dial><Number|Sip|Conference> a transfer updates a live call to

Exits 1 with a message per mismatch.
"""
import json
import sys
import xml.etree.ElementTree as ET
from urllib.parse import parse_qs, urlparse

import twilio
from multidict import MultiDict  # a twilio dependency (via aiohttp); RequestValidator uses getall()
from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import Connect, Dial, Parameter, Stream, VoiceResponse

XML_DECL = '<?xml version="1.0" encoding="UTF-8"?>'

failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL  " + msg)


def ok(msg):
    print("ok    " + msg)


def short(s, n=70):
    return s if len(s) <= n else s[: n - 3] + "..."


def check_signature(i, vec):
    token, url, sig = vec["token"], vec["url"], vec["signature"]
    params = MultiDict([(k, v) for k, v in vec["params"]])
    v = RequestValidator(token)
    label = f"signatures[{i}] {short(url)} ({len(vec['params'])} params)"
    expected = v.compute_signature(url, params)
    if expected != sig:
        fail(f"{label}: twilio computes {expected!r}, we produced {sig!r}")
        return
    if not v.validate(url, params, sig):
        fail(f"{label}: RequestValidator.validate rejected our signature {sig!r}")
        return
    # tampering must be detected by the oracle (guards against a vacuous check)
    if vec["params"]:
        k0, v0 = vec["params"][0]
        tampered = MultiDict([(k0, v0 + "x")] + [(k, val) for k, val in vec["params"][1:]])
    else:
        tampered = MultiDict([("Injected", "1")])
    if v.validate(url, tampered, sig):
        fail(f"{label}: a tampered param still validates")
        return
    if v.validate(url + "x", params, sig):
        fail(f"{label}: a tampered url still validates")
        return
    if RequestValidator(token + "x").validate(url, params, sig):
        fail(f"{label}: validates under a different auth token")
        return
    ok(f"{label}: {sig}")


def check_json_body(i, vec):
    token, url, body, sig = vec["token"], vec["url"], vec["body"], vec["signature"]
    v = RequestValidator(token)
    label = f"json_bodies[{i}] {short(url)}"
    query = parse_qs(urlparse(url).query)
    if "bodySHA256" not in query:
        fail(f"{label}: url has no bodySHA256 query parameter")
        return
    if query["bodySHA256"][0] != v.compute_hash(body):
        fail(f"{label}: bodySHA256 {query['bodySHA256'][0]} != twilio compute_hash {v.compute_hash(body)}")
        return
    expected = v.compute_signature(url, {})
    if expected != sig:
        fail(f"{label}: twilio computes {expected!r}, we produced {sig!r}")
        return
    if not v.validate(url, body, sig):
        fail(f"{label}: RequestValidator.validate(url, body, sig) rejected our signature")
        return
    if v.validate(url, body + " ", sig):
        fail(f"{label}: a tampered body still validates")
        return
    ok(f"{label}: {sig}")


def reference_twiml(inp):
    resp = VoiceResponse()
    if inp.get("say") is not None:
        resp.say(inp["say"])
    connect = Connect()
    kwargs = {"url": inp["url"]}
    if inp.get("status_callback") is not None:
        kwargs["status_callback"] = inp["status_callback"]
    stream = Stream(**kwargs)
    for name, value in inp.get("parameters") or []:
        stream.append(Parameter(name=name, value=value))
    connect.append(stream)
    resp.append(connect)
    return str(resp)


def diff_tree(a, b, path):
    """Structural comparison: tag, attributes (order ignored), text, tail, children."""
    here = f"{path}/{a.tag}"
    if a.tag != b.tag:
        return f"{path}: tag {a.tag!r} (ours) != {b.tag!r} (twilio)"
    if a.attrib != b.attrib:
        return f"{here}: attributes {a.attrib!r} (ours) != {b.attrib!r} (twilio)"
    if (a.text or "") != (b.text or ""):
        return f"{here}: text {a.text!r} (ours) != {b.text!r} (twilio)"
    if (a.tail or "") != (b.tail or ""):
        return f"{here}: tail {a.tail!r} (ours) != {b.tail!r} (twilio)"
    if len(a) != len(b):
        return f"{here}: {len(a)} children (ours) != {len(b)} (twilio)"
    for ca, cb in zip(a, b):
        d = diff_tree(ca, cb, here)
        if d:
            return d
    return None


def check_twiml(i, vec):
    inp, ours = vec["input"], vec["xml"]
    label = f"twiml[{i}] params={len(inp.get('parameters') or [])} say={'yes' if inp.get('say') is not None else 'no'}"
    if not ours.startswith(XML_DECL):
        fail(f"{label}: does not start with {XML_DECL}")
        return
    theirs = reference_twiml(inp)
    try:
        ours_tree = ET.fromstring(ours.encode("utf-8"))
    except ET.ParseError as e:
        fail(f"{label}: our XML does not parse: {e}\n      {ours}")
        return
    theirs_tree = ET.fromstring(theirs.encode("utf-8"))
    d = diff_tree(ours_tree, theirs_tree, "")
    if d:
        fail(f"{label}: {d}\n      ours  : {ours}\n      twilio: {theirs}")
        return
    ok(label)


def reference_dial(inp):
    resp = VoiceResponse()
    if inp.get("say") is not None:
        resp.say(inp["say"])
    kwargs = {}
    if inp.get("caller_id") is not None:
        kwargs["caller_id"] = inp["caller_id"]
    if inp.get("timeout") is not None:
        kwargs["timeout"] = inp["timeout"]
    dial = Dial(**kwargs)
    if inp["kind"] == "number":
        dial.number(inp["to"])
    elif inp["kind"] == "sip":
        dial.sip(inp["to"])
    else:
        dial.conference(
            inp["to"],
            start_conference_on_enter=inp["start_conference_on_enter"],
            end_conference_on_exit=inp["end_conference_on_exit"],
        )
    resp.append(dial)
    return str(resp)


def check_dial(i, vec):
    inp, ours = vec["input"], vec["xml"]
    label = f"dial[{i}] {inp['kind']}"
    theirs = reference_dial(inp)
    try:
        ours_tree = ET.fromstring(ours.encode("utf-8"))
    except ET.ParseError as e:
        fail(f"{label}: our XML does not parse: {e}\n      {ours}")
        return
    d = diff_tree(ours_tree, ET.fromstring(theirs.encode("utf-8")), "")
    if d:
        fail(f"{label}: {d}\n      ours  : {ours}\n      twilio: {theirs}")
        return
    ok(label)


def main(argv):
    if len(argv) != 2 or argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        return 2
    path = argv[1]
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        print(f"FAIL  cannot read vectors from {path}: {e}")
        return 1
    print(f"twilio {twilio.__version__}: checking {path}")
    for section in ("signatures", "json_bodies", "twiml", "dial"):
        if not doc.get(section):
            fail(f"section {section!r} is missing or empty")
    for i, vec in enumerate(doc.get("signatures") or []):
        check_signature(i, vec)
    for i, vec in enumerate(doc.get("json_bodies") or []):
        check_json_body(i, vec)
    for i, vec in enumerate(doc.get("twiml") or []):
        check_twiml(i, vec)
    for i, vec in enumerate(doc.get("dial") or []):
        check_dial(i, vec)
    n = sum(len(doc.get(s) or []) for s in ("signatures", "json_bodies", "twiml", "dial"))
    if failures:
        print(f"\ncheck_twilio: FAILED ({len(failures)} failure(s), {n} vector(s) read)")
        return 1
    print(f"\ncheck_twilio: all {n} vectors agree with twilio {twilio.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
