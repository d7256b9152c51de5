#!/usr/bin/env python3
"""Validate Realtime Calls API bodies OUR code sent (SIP accept / refer / reject) against the openai SDK's types.

Usage:
  check_accept.py BODIES.jsonl
  check_accept.py --self-test [BODIES.jsonl]

Each non-blank line of BODIES.jsonl is either a bare accept body ({"type": "realtime", ...}) or a
wrapper {"op": "accept"|"refer"|"reject", "body": {...}} as written by
crates/realtime/tests/calls_client.rs (when VOXBRIDGE_CONFORMANCE_DIR is set).

Oracle: the official `openai` package (pinned in conformance/requirements.txt):
  * accept -> openai.types.realtime.call_accept_params.CallAcceptParams, the TypedDict behind
    client.realtime.calls.accept(...);
  * refer  -> openai.types.realtime.call_refer_params.CallReferParams;
  * reject -> openai.types.realtime.call_reject_params.CallRejectParams.
Each is subclassed with pydantic config extra="forbid", strict=True and validated through a
TypeAdapter (the config reaches every nested TypedDict), so unknown keys at any depth, beta field
names and "1024"-for-an-int all fail (CONFORMANCE.md §2.4).

On top of the SDK type, two SIP rules the SDK types do not encode (the Calls API itself rejects
them, PROTOCOLS.md b6):
  * no audio.input.format / audio.output.format (the codec is negotiated in SIP/SDP);
  * no turn_detection threshold / prefix_padding_ms / silence_duration_ms: accept fails with
    400 "Unknown parameter: 'session.audio.input.turn_detection.threshold'"
    (openai/openai-agents-js issue #741; the Agents SDK refuses them since PR #1170).

Prints a count per op and every failure; exits 1 on any failure or when the file has no bodies.
"""
import argparse
import collections
import json
import sys

import openai
import pydantic
from openai.types.realtime.call_accept_params import CallAcceptParams
from openai.types.realtime.call_refer_params import CallReferParams
from openai.types.realtime.call_reject_params import CallRejectParams
from pydantic import ConfigDict, TypeAdapter, ValidationError

STRICT = ConfigDict(extra="forbid", strict=True)


@pydantic.with_config(STRICT)
class StrictAccept(CallAcceptParams):
    pass


@pydantic.with_config(STRICT)
class StrictRefer(CallReferParams):
    pass


@pydantic.with_config(STRICT)
class StrictReject(CallRejectParams):
    pass


ADAPTERS = {
    "accept": TypeAdapter(StrictAccept),
    "refer": TypeAdapter(StrictRefer),
    "reject": TypeAdapter(StrictReject),
}

SIP_FORBIDDEN_TURN_DETECTION = ("threshold", "prefix_padding_ms", "silence_duration_ms")


def sip_rules(body):
    """SIP-only restrictions on an accept body (the SDK's TypedDict allows these keys)."""
    out = []
    audio = body.get("audio") if isinstance(body, dict) else None
    if not isinstance(audio, dict):
        return out
    for side in ("input", "output"):
        part = audio.get(side)
        if isinstance(part, dict) and "format" in part:
            out.append(f"audio.{side}.format is set (SIP negotiates the codec; do not send it)")
    td = (audio.get("input") or {}).get("turn_detection") if isinstance(audio.get("input"), dict) else None
    if isinstance(td, dict):
        for k in SIP_FORBIDDEN_TURN_DETECTION:
            if k in td:
                out.append(f"audio.input.turn_detection.{k} is set (the Calls API rejects it for SIP)")
    return out


def check(op, body):
    """None if body is a valid `op` body, else a one-line reason."""
    adapter = ADAPTERS.get(op)
    if adapter is None:
        return f"unknown op {op!r}"
    if not isinstance(body, dict):
        return f"not a JSON object: {type(body).__name__}"
    try:
        # through JSON so strict mode sees JSON types, as on the wire
        adapter.validate_json(json.dumps(body), strict=True)
    except ValidationError as e:
        errs = e.errors()
        first = errs[0]
        more = f" (+{len(errs) - 1} more)" if len(errs) > 1 else ""
        return f"{first['type']} at {first['loc']}: {first['msg'][:120]}{more}"
    if op == "accept":
        broken = sip_rules(body)
        if broken:
            return "; ".join(broken)
    return None


def unwrap(obj):
    if isinstance(obj, dict) and "body" in obj and "op" in obj and "type" not in obj:
        return obj["op"], obj["body"]
    return "accept", obj


def check_file(path):
    counts = collections.Counter()
    failures = []
    total = 0
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        print(f"FAIL  cannot open {path}: {e}")
        return 1
    with f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            total += 1
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as e:
                failures.append((lineno, "?", f"invalid JSON: {e}"))
                continue
            op, body = unwrap(raw)
            counts[op] += 1
            reason = check(op, body)
            if reason:
                failures.append((lineno, op, reason))

    print(f"openai {openai.__version__}, pydantic {pydantic.VERSION}: {total} Calls API bod(ies) in {path}")
    for op, n in sorted(counts.items()):
        print(f"  {n:6d}  {op}")
    for lineno, op, reason in failures:
        print(f"FAIL  line {lineno} {op}: {reason}")
    if total == 0:
        print(f"FAIL  {path} contains no bodies")
        return 1
    if counts["accept"] == 0:
        print(f"FAIL  {path} contains no accept body")
        return 1
    if failures:
        print(f"check_accept: {len(failures)} of {total} bod(ies) FAILED")
        return 1
    print(f"check_accept: all {total} bod(ies) valid (strict CallAcceptParams/CallReferParams/CallRejectParams + SIP rules)")
    return 0


# ---------------------------------------------------------------------------------------------
# self-test

ACCEPT = {
    "type": "realtime",
    "model": "gpt-realtime-2.1",
    "instructions": "You are an AI assistant calling on behalf of Acme.",
    "output_modalities": ["audio"],
    "audio": {
        "input": {
            "transcription": {"model": "gpt-4o-mini-transcribe", "language": "en"},
            "noise_reduction": {"type": "near_field"},
            "turn_detection": {"type": "server_vad", "create_response": True, "interrupt_response": True},
        },
        "output": {"voice": "marin"},
    },
    "tools": [{
        "type": "function", "name": "end_call", "description": "End the call.",
        "parameters": {"type": "object", "properties": {"reason": {"type": "string"}}},
    }],
    "tool_choice": "auto",
    "max_output_tokens": 1024,
}


def _accept_with(mutate):
    o = json.loads(json.dumps(ACCEPT))
    mutate(o)
    return o


def _td(o):
    return o["audio"]["input"]["turn_detection"]


POSITIVE = {
    "accept (server_vad, tools)": ("accept", ACCEPT),
    "accept minimal": ("accept", {"type": "realtime"}),
    "accept semantic_vad + eagerness": ("accept", _accept_with(
        lambda o: o["audio"]["input"].__setitem__(
            "turn_detection", {"type": "semantic_vad", "eagerness": "low", "create_response": True}))),
    "accept turn_detection null": ("accept", _accept_with(
        lambda o: o["audio"]["input"].__setitem__("turn_detection", None))),
    "accept forced function": ("accept", _accept_with(
        lambda o: o.__setitem__("tool_choice", {"type": "function", "name": "end_call"}))),
    "accept max_output_tokens inf": ("accept", _accept_with(lambda o: o.__setitem__("max_output_tokens", "inf"))),
    "wrapped accept": ("wrapped", {"op": "accept", "body": ACCEPT}),
    "refer tel": ("refer", {"target_uri": "tel:+14155550123"}),
    "refer sip": ("refer", {"target_uri": "sip:agent@example.com"}),
    "reject 486": ("reject", {"status_code": 486}),
    "reject default": ("reject", {}),
}

NEGATIVE = {
    "accept: missing type": ("accept", _accept_with(lambda o: o.pop("type"))),
    "accept: type 'transcription'": ("accept", _accept_with(lambda o: o.__setitem__("type", "transcription"))),
    "accept: unknown top-level field 'voice'": ("accept", _accept_with(lambda o: o.__setitem__("voice", "marin"))),
    "accept: beta 'modalities'": ("accept", _accept_with(lambda o: o.__setitem__("modalities", ["audio"]))),
    "accept: beta 'input_audio_format'": ("accept", _accept_with(
        lambda o: o.__setitem__("input_audio_format", "g711_ulaw"))),
    "accept: nested unknown key": ("accept", _accept_with(lambda o: _td(o).__setitem__("silence_ms", 500))),
    "accept: wrong field name in tool": ("accept", _accept_with(
        lambda o: o["tools"][0].__setitem__("parameter", {}))),
    "accept: max_output_tokens '1024'": ("accept", _accept_with(lambda o: o.__setitem__("max_output_tokens", "1024"))),
    "accept: tool_choice 'sometimes'": ("accept", _accept_with(lambda o: o.__setitem__("tool_choice", "sometimes"))),
    "accept: eagerness 'very'": ("accept", _accept_with(
        lambda o: o["audio"]["input"].__setitem__("turn_detection", {"type": "semantic_vad", "eagerness": "very"}))),
    "accept: create_response 'true'": ("accept", _accept_with(lambda o: _td(o).__setitem__("create_response", "true"))),
    "accept (SIP rule): audio.input.format": ("accept", _accept_with(
        lambda o: o["audio"]["input"].__setitem__("format", {"type": "audio/pcmu"}))),
    "accept (SIP rule): audio.output.format": ("accept", _accept_with(
        lambda o: o["audio"]["output"].__setitem__("format", {"type": "audio/pcmu"}))),
    "accept (SIP rule): threshold": ("accept", _accept_with(lambda o: _td(o).__setitem__("threshold", 0.5))),
    "accept (SIP rule): prefix_padding_ms": ("accept", _accept_with(
        lambda o: _td(o).__setitem__("prefix_padding_ms", 300))),
    "accept (SIP rule): silence_duration_ms": ("accept", _accept_with(
        lambda o: _td(o).__setitem__("silence_duration_ms", 500))),
    "refer: 'target' instead of 'target_uri'": ("refer", {"target": "tel:+14155550123"}),
    "reject: status_code '486'": ("reject", {"status_code": "486"}),
    "reject: unknown field": ("reject", {"status_code": 486, "reason": "busy"}),
    "not an object": ("accept", [1, 2]),
}


def self_test():
    bad = 0
    for name, (op, obj) in POSITIVE.items():
        if op == "wrapped":
            op, obj = unwrap(obj)
        reason = check(op, obj)
        if reason:
            bad += 1
            print(f"FAIL  positive {name!r} rejected: {reason}")
        else:
            print(f"ok    positive {name!r} accepted")
    for name, (op, obj) in NEGATIVE.items():
        reason = check(op, obj)
        if reason:
            print(f"ok    negative {name!r} rejected: {reason}")
        else:
            bad += 1
            print(f"FAIL  negative {name!r} ACCEPTED")
    n = len(POSITIVE) + len(NEGATIVE)
    if bad:
        print(f"check_accept --self-test: {bad} of {n} case(s) FAILED")
        return 1
    print(f"check_accept --self-test: all {n} cases behave (openai {openai.__version__})")
    return 0


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("bodies", nargs="?", help="JSONL file of Calls API bodies")
    ap.add_argument("--self-test", action="store_true", help="run built-in positive/negative cases")
    args = ap.parse_args(argv[1:])
    if args.self_test:
        rc = self_test()
        if args.bodies:
            rc |= check_file(args.bodies)
        return rc
    if not args.bodies:
        ap.error("BODIES.jsonl is required (or --self-test)")
    return check_file(args.bodies)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
