#!/usr/bin/env python3
"""Validate OpenAI Realtime (GA) events captured from OUR server against the openai SDK's models.

Usage:
  check_realtime_events.py EVENTS.jsonl [--server]
  check_realtime_events.py --self-test

Each non-blank line of EVENTS.jsonl is either an event object ({"type": ...}) or a wrapper
{"conn": .., "t_ms": .., "event": {...}} whose "event" is validated. By default events are
client events (openai.types.realtime.RealtimeClientEvent); --server validates server events
(RealtimeServerEvent) instead.

Validation is strict (CONFORMANCE.md §2.1/§2.2):
  * the union is discriminated on "type", so unknown/beta event names fail;
  * pydantic strict mode, so "1500" for an int fails;
  * the SDK's BaseModel is extra="allow", so every model's __pydantic_extra__ is walked
    and any unknown field fails.

Prints a count per event type and every failure; exits 1 if any event fails or if the file
has no events.
"""
import argparse
import collections
import json
import sys
import typing

import openai
import pydantic
from openai.types.realtime import RealtimeClientEvent, RealtimeServerEvent
from pydantic import Field, TypeAdapter, ValidationError
from typing_extensions import Annotated


def strict_adapter(union_alias):
    # The SDK's alias is Annotated[Union[...], PropertyInfo(discriminator="type")]; PropertyInfo is
    # SDK metadata, so re-wrap the same Union with a real pydantic discriminator.
    union = typing.get_args(union_alias)[0]
    return TypeAdapter(Annotated[union, Field(discriminator="type")])


CLIENT = strict_adapter(RealtimeClientEvent)
SERVER = strict_adapter(RealtimeServerEvent)


def extras(m, path="$"):
    """Every unknown key kept by the SDK's extra='allow' models, as a JSON-path-like string."""
    out = []
    if isinstance(m, pydantic.BaseModel):
        for k in m.__pydantic_extra__ or {}:
            out.append(f"{path}.{k}")
        for name in type(m).model_fields:
            out += extras(getattr(m, name), f"{path}.{name}")
    elif isinstance(m, (list, tuple)):
        for i, x in enumerate(m):
            out += extras(x, f"{path}[{i}]")
    elif isinstance(m, dict):
        for k, x in m.items():
            out += extras(x, f"{path}.{k}")
    return out


def check(adapter, obj):
    """None if obj is a valid event, else a one-line reason."""
    if not isinstance(obj, dict):
        return f"not a JSON object: {type(obj).__name__}"
    try:
        # through JSON so strict mode sees JSON types (as on the wire)
        ev = adapter.validate_json(json.dumps(obj), strict=True)
    except ValidationError as e:
        errs = e.errors()
        first = errs[0]
        more = f" (+{len(errs) - 1} more)" if len(errs) > 1 else ""
        return f"{first['type']} at {first['loc']}: {first['msg'][:120]}{more}"
    unknown = extras(ev)
    if unknown:
        return f"unknown field(s) {unknown} (model={type(ev).__name__})"
    return None


def unwrap(obj):
    if isinstance(obj, dict) and "event" in obj and "type" not in obj:
        return obj["event"], obj.get("conn")
    return obj, None


def check_file(path, server):
    adapter = SERVER if server else CLIENT
    kind = "server" if server else "client"
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
                failures.append((lineno, "?", None, f"invalid JSON: {e}"))
                continue
            event, conn = unwrap(raw)
            etype = event.get("type", "<no type>") if isinstance(event, dict) else "<not an object>"
            counts[etype] += 1
            reason = check(adapter, event)
            if reason:
                failures.append((lineno, etype, conn, reason))

    print(f"openai {openai.__version__}, pydantic {pydantic.VERSION}: {total} {kind} event(s) in {path}")
    for etype, n in sorted(counts.items()):
        print(f"  {n:6d}  {etype}")
    for lineno, etype, conn, reason in failures:
        where = f"line {lineno}" + (f" conn={conn}" if conn is not None else "")
        print(f"FAIL  {where} {etype}: {reason}")
    if total == 0:
        print(f"FAIL  {path} contains no events")
        return 1
    if failures:
        print(f"check_realtime_events: {len(failures)} of {total} event(s) FAILED")
        return 1
    print(f"check_realtime_events: all {total} {kind} event(s) valid")
    return 0


# ---------------------------------------------------------------------------------------------
# self-test

SESSION_UPDATE = {
    "type": "session.update",
    "session": {
        "type": "realtime",
        "model": "gpt-realtime",
        "output_modalities": ["audio"],
        "instructions": "You are a helpful phone agent.",
        "audio": {
            "input": {
                "format": {"type": "audio/pcmu"},
                "transcription": {"model": "gpt-4o-transcribe", "language": "en"},
                "noise_reduction": {"type": "far_field"},
                "turn_detection": {
                    "type": "server_vad",
                    "threshold": 0.5,
                    "prefix_padding_ms": 300,
                    "silence_duration_ms": 500,
                    "create_response": True,
                    "interrupt_response": True,
                },
            },
            "output": {"format": {"type": "audio/pcmu"}, "voice": "marin"},
        },
        "tools": [],
        "tool_choice": "auto",
    },
}


def _session_with(mutate):
    o = json.loads(json.dumps(SESSION_UPDATE))
    mutate(o)
    return o


TRUNCATE = {"type": "conversation.item.truncate", "item_id": "item_1", "content_index": 0, "audio_end_ms": 1500}

CLIENT_POSITIVE = {
    "session.update (pcmu, server_vad)": SESSION_UPDATE,
    "session.update semantic_vad": _session_with(
        lambda o: o["session"]["audio"]["input"].__setitem__(
            "turn_detection", {"type": "semantic_vad", "eagerness": "auto"}
        )
    ),
    "session.update turn_detection null": _session_with(
        lambda o: o["session"]["audio"]["input"].__setitem__("turn_detection", None)
    ),
    "input_audio_buffer.append": {"type": "input_audio_buffer.append", "audio": "f39/fw=="},
    "input_audio_buffer.append with event_id": {
        "type": "input_audio_buffer.append", "event_id": "evt_1", "audio": "f39/fw=="},
    "input_audio_buffer.commit": {"type": "input_audio_buffer.commit"},
    "input_audio_buffer.clear": {"type": "input_audio_buffer.clear"},
    "conversation.item.truncate": TRUNCATE,
    "response.create": {"type": "response.create"},
    "response.cancel": {"type": "response.cancel"},
    "output_audio_buffer.clear": {"type": "output_audio_buffer.clear"},
    "conversation.item.create (user text)": {
        "type": "conversation.item.create",
        "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
    },
    "wrapped event": {"conn": 1, "t_ms": 12, "event": {"type": "response.cancel"}},
}

CLIENT_NEGATIVE = {
    "truncate: audio_end instead of audio_end_ms": {
        "type": "conversation.item.truncate", "item_id": "item_1", "content_index": 0, "audio_end": 1500},
    "truncate: audio_end_ms as string '1500'": {**TRUNCATE, "audio_end_ms": "1500"},
    "truncate: audio_end_ms 1500.5": {**TRUNCATE, "audio_end_ms": 1500.5},
    "beta event name response.audio.delta": {"type": "response.audio.delta", "delta": "AA=="},
    "misspelt event name": {"type": "input_audio_buffer.apend", "audio": "AA=="},
    "missing type": {"audio": "AA=="},
    "append: missing audio": {"type": "input_audio_buffer.append"},
    "append: audio not a string": {"type": "input_audio_buffer.append", "audio": 123},
    "clear: unknown field": {"type": "input_audio_buffer.clear", "foo": 1},
    "session.update: beta string format 'g711_ulaw'": _session_with(
        lambda o: o["session"]["audio"]["input"].__setitem__("format", "g711_ulaw")),
    "session.update: format type 'audio/g711_ulaw'": _session_with(
        lambda o: o["session"]["audio"]["output"]["format"].__setitem__("type", "audio/g711_ulaw")),
    "session.update: missing session.type": _session_with(lambda o: o["session"].pop("type")),
    "session.update: beta key modalities": _session_with(
        lambda o: o["session"].__setitem__("modalities", ["audio"])),
    "session.update: nested unknown key": _session_with(
        lambda o: o["session"]["audio"]["input"]["turn_detection"].__setitem__("silence_ms", 500)),
    "session.update: beta flat session": {"type": "session.update", "session": {
        "modalities": ["audio", "text"], "input_audio_format": "g711_ulaw", "output_audio_format": "g711_ulaw"}},
    "session.update: prefix_padding_ms '300'": _session_with(
        lambda o: o["session"]["audio"]["input"]["turn_detection"].__setitem__("prefix_padding_ms", "300")),
    "not an object": [1, 2],
    "wrapped bad event": {"conn": 1, "t_ms": 12, "event": {"type": "response.cancel", "bogus": True}},
}

SERVER_POSITIVE = {
    "response.output_audio.delta": {
        "type": "response.output_audio.delta", "event_id": "ev_1", "response_id": "resp_1",
        "item_id": "item_1", "output_index": 0, "content_index": 0, "delta": "f39/fw=="},
    "input_audio_buffer.speech_started": {
        "type": "input_audio_buffer.speech_started", "event_id": "ev_2", "audio_start_ms": 1000,
        "item_id": "item_2"},
}

SERVER_NEGATIVE = {
    "beta response.audio.delta": {
        "type": "response.audio.delta", "event_id": "ev_1", "response_id": "resp_1",
        "item_id": "item_1", "output_index": 0, "content_index": 0, "delta": "f39/fw=="},
    "speech_started audio_start_ms '1000'": {
        "type": "input_audio_buffer.speech_started", "event_id": "ev_2", "audio_start_ms": "1000",
        "item_id": "item_2"},
}


def self_test():
    bad = 0
    for kind, adapter, positive, negative in (
        ("client", CLIENT, CLIENT_POSITIVE, CLIENT_NEGATIVE),
        ("server", SERVER, SERVER_POSITIVE, SERVER_NEGATIVE),
    ):
        for name, obj in positive.items():
            reason = check(adapter, unwrap(obj)[0])
            if reason:
                bad += 1
                print(f"FAIL  {kind} positive {name!r} rejected: {reason}")
            else:
                print(f"ok    {kind} positive {name!r} accepted")
        for name, obj in negative.items():
            reason = check(adapter, unwrap(obj)[0])
            if reason:
                print(f"ok    {kind} negative {name!r} rejected: {reason}")
            else:
                bad += 1
                print(f"FAIL  {kind} negative {name!r} ACCEPTED")
    n = sum(len(d) for d in (CLIENT_POSITIVE, CLIENT_NEGATIVE, SERVER_POSITIVE, SERVER_NEGATIVE))
    if bad:
        print(f"check_realtime_events --self-test: {bad} of {n} case(s) FAILED")
        return 1
    print(f"check_realtime_events --self-test: all {n} cases behave (openai {openai.__version__})")
    return 0


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("events", nargs="?", help="JSONL file of events")
    ap.add_argument("--server", action="store_true", help="validate server events instead of client events")
    ap.add_argument("--self-test", action="store_true", help="run built-in positive/negative cases")
    args = ap.parse_args(argv[1:])
    if args.self_test:
        rc = self_test()
        if args.events:
            rc |= check_file(args.events, args.server)
        return rc
    if not args.events:
        ap.error("EVENTS.jsonl is required (or --self-test)")
    return check_file(args.events, args.server)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
