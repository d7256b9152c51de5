#!/usr/bin/env python3
"""Standard Webhooks vectors for OpenAI's realtime.call.incoming, signed and judged by the official packages.

Usage:
  check_webhooks.py OUT.json [--compare CHECKED_IN.json]

Writes OUT.json: a list of webhook deliveries (secret, webhook-id, webhook-timestamp,
webhook-signature, raw body, "now") and the verdict of the reference implementation for each.
crates/realtime/tests/webhook_vectors.rs then checks that our WebhookVerifier agrees with every
verdict (it reads target/conformance/webhook_vectors.json, or $VOXBRIDGE_WEBHOOK_VECTORS).
With --compare, also checks that CHECKED_IN.json (crates/realtime/tests/data/webhook_vectors.json,
the copy the Rust test always reads) is exactly what this script generates.

Oracles (versions pinned in conformance/requirements.txt):
  * standardwebhooks.Webhook.sign / .verify: the reference library of the spec
    (github.com/standard-webhooks/standard-webhooks) - signs every vector and gives the verdict;
  * openai's verifier (client.webhooks.verify_signature, i.e. openai.lib._webhooks), as OpenAI's
    own receiver-side implementation - must reach the same verdict (the script fails otherwise),
    except on the few vectors marked "expected_from", where the two libraries differ and the
    vector records which one we follow and why;
  * openai.types.webhooks.RealtimeCallIncomingWebhookEvent validates the sample event (strict,
    unknown keys rejected).

Determinism: both libraries read the wall clock, so each verdict is computed with that clock
frozen at the vector's "now" (standardwebhooks.webhooks.datetime.now and
openai.lib._webhooks.time.time are patched for the duration of one verify call). With fixed
secrets, ids and timestamps the output is byte-for-byte reproducible.
"""
import argparse
import base64
import contextlib
import datetime as _dt
import json
import sys
from unittest import mock

import openai
import pydantic
import standardwebhooks
import standardwebhooks.webhooks as sw_mod
from openai import InvalidWebhookSignatureError, OpenAI
from openai.lib import _webhooks as oa_mod
from openai.types.webhooks import RealtimeCallIncomingWebhookEvent
from standardwebhooks import Webhook, WebhookVerificationError

NOW = 1750287078  # the webhook-timestamp of the delivery shown in the realtime-sip guide
TOLERANCE = 300


def secret_of(key: bytes) -> str:
    return "whsec_" + base64.b64encode(key).decode()


SECRET_A = secret_of(b"conformance-test-key-32-bytes!!!")
SECRET_B = secret_of(b"sixteen-byte-key")
SECRET_C = secret_of(bytes(range(64)))
SECRET_OTHER = secret_of(b"some-other-key-some-other-key!!!")
# the fixed vector of the standard-webhooks repo (libraries/python/tests/test_webhooks.py)
UPSTREAM = {
    "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
    "timestamp": 1614265330,
    "body": '{"test": 2432232314}',
    "signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
}

EVENT = {
    "object": "event",
    "id": "evt_685343a1381c819085d44c354e1b330e",
    "type": "realtime.call.incoming",
    "created_at": NOW - 2,
    "data": {
        "call_id": "rtc_u1_9c6574da8b8a41a18da9308f4ad974ce",
        "sip_headers": [
            {"name": "From", "value": "\"Jane Caller\" <sip:+14255551212@sip.example.com>;tag=9fxced76sl"},
            {"name": "To", "value": "<sip:+18005551212@sip.example.com;user=phone>"},
            {"name": "Call-ID", "value": "03782086-4ce9-44bf-8b0d-4e303d2cc590"},
            {"name": "X-Voxbridge-Campaign", "value": "spring-reminders"},
        ],
        "sip_media_security": "srtp",
    },
}
BODY = json.dumps(EVENT, separators=(",", ":"))
EVENT_EXPECT = {"call_id": EVENT["data"]["call_id"], "to_number": "+18005551212",
                "from_number": "+14255551212", "event_id": EVENT["id"], "created_at": EVENT["created_at"]}
MSG_ID = "wh_685342e6c53c8190a1be43f081506c52"

# oracle messages -> our stable error codes (crates/realtime/src/webhooks.rs)
SW_CODES = {
    "Missing required headers": "MISSING_HEADER",
    "Invalid Signature Headers": "INVALID_TIMESTAMP",
    "Message timestamp too old": "TIMESTAMP_TOO_OLD",
    "Message timestamp too new": "TIMESTAMP_TOO_NEW",
    "No matching signature found": "NO_MATCHING_SIGNATURE",
}
OA_CODES = {
    "Invalid webhook timestamp format": "INVALID_TIMESTAMP",
    "Webhook timestamp is too old": "TIMESTAMP_TOO_OLD",
    "Webhook timestamp is too new": "TIMESTAMP_TOO_NEW",
    "The given webhook signature does not match the expected signature": "NO_MATCHING_SIGNATURE",
}


@contextlib.contextmanager
def frozen(now):
    class FrozenDatetime(_dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return _dt.datetime.fromtimestamp(now, tz=tz)

    class FrozenTime:
        @staticmethod
        def time():
            return float(now)

    with mock.patch.object(sw_mod, "datetime", FrozenDatetime), mock.patch.object(oa_mod, "time", FrozenTime):
        yield


def sign(secret, msg_id, ts, body):
    return Webhook(secret).sign(msg_id=msg_id, timestamp=_dt.datetime.fromtimestamp(ts, tz=_dt.timezone.utc),
                                data=body)


def headers_of(v):
    h = {"content-type": "application/json"}
    for key, name in (("id", "webhook-id"), ("timestamp", "webhook-timestamp"), ("signature", "webhook-signature")):
        if v[key] is not None:
            h[name] = v[key]
    return h


def sw_verdict(v):
    """(verdict, code or None) from standardwebhooks."""
    try:
        wh = Webhook(v["secret"])
    except Exception as e:  # EmptyWebhookSecretError, binascii.Error
        return f"secret refused: {type(e).__name__}: {e}", "INVALID_SECRET"
    with frozen(v["now"]):
        try:
            wh.verify(v["body"], headers_of(v), json_parse=False)
            return "accept", None
        except WebhookVerificationError as e:
            return f"reject: {e}", SW_CODES.get(str(e), "?")
        except Exception as e:  # the library does not guard every malformed header
            return f"crash: {type(e).__name__}: {e}", "?"


def oa_verdict(v):
    """(verdict, code or None) from the openai SDK's verifier."""
    client = OpenAI(api_key="sk-test-not-real", webhook_secret=v["secret"])
    with frozen(v["now"]):
        try:
            client.webhooks.verify_signature(v["body"], headers_of(v), tolerance=TOLERANCE)
            return "accept", None
        except InvalidWebhookSignatureError as e:
            return f"reject: {e}", OA_CODES.get(str(e), "?")
        except ValueError as e:  # get_required_header: "Could not find webhook-… header"
            if "Could not find" in str(e):
                return f"reject: {e}", "MISSING_HEADER"
            return f"crash: {type(e).__name__}: {e}", "?"
        except Exception as e:
            return f"crash: {type(e).__name__}: {e}", "?"


MISSING = object()  # a header left out of the delivery


def vectors():
    out = []

    def add(name, *, secret=SECRET_A, msg_id=MSG_ID, ts=NOW, body=BODY, signature=None, now=NOW,
            timestamp=None, note=None, expected_from=None, event=None, signed_by_secret=False):
        if signature is None:
            signature = sign(secret, msg_id, ts, body)
            signed_by_secret = True
        v = {
            "name": name,
            "secret": secret,
            "id": None if msg_id is MISSING else msg_id,
            "timestamp": str(ts) if timestamp is None else (None if timestamp is MISSING else timestamp),
            "signature": None if signature is MISSING else signature,
            "body": body,
            "now": now,
        }
        if note:
            v["note"] = note
        if expected_from:
            v["expected_from"] = expected_from
        if event:
            v["event"] = event
        v["signed_by_secret"] = signed_by_secret
        out.append(v)

    good_a = sign(SECRET_A, MSG_ID, NOW, BODY)
    other = sign(SECRET_OTHER, MSG_ID, NOW, BODY)

    add("upstream fixed vector (standard-webhooks test_sign_function)", secret=UPSTREAM["secret"],
        msg_id=UPSTREAM["id"], ts=UPSTREAM["timestamp"], body=UPSTREAM["body"], now=UPSTREAM["timestamp"])
    add("realtime.call.incoming, secret A", event=EVENT_EXPECT)
    add("realtime.call.incoming, secret B (16-byte key)", secret=SECRET_B, event=EVENT_EXPECT)
    add("realtime.call.incoming, secret C (64-byte key)", secret=SECRET_C, event=EVENT_EXPECT)
    add("two v1 entries, only the second matches (key rotation)", signature=f"{other} {good_a}",
        signed_by_secret=True, event=EVENT_EXPECT)
    add("two v1 entries, only the first matches", signature=f"{good_a} {other}", signed_by_secret=True)
    add("three v1 entries, middle matches", signature=f"{other} {good_a} {sign(SECRET_B, MSG_ID, NOW, BODY)}",
        signed_by_secret=True)
    add("v2 entry then matching v1", signature=f"v2,{good_a[3:]} {good_a}", signed_by_secret=True)
    add("v2-only entry (same bytes, unknown version)", signature=f"v2,{good_a[3:]}")
    add("signed with another secret", signature=other)
    add("tampered body (call_id changed)", body=BODY.replace("rtc_u1_", "rtc_u2_"), signature=good_a)
    add("tampered body (To number changed)", body=BODY.replace("+18005551212", "+19005551212"), signature=good_a)
    add("body re-serialized with spaces (same JSON, other bytes)", body=json.dumps(EVENT), signature=good_a)
    add("body with a trailing newline", body=BODY + "\n", signature=good_a)
    add("tampered webhook-id", msg_id="wh_00000000000000000000000000000000", signature=good_a)
    add("tampered webhook-timestamp (+1 s, signature unchanged)", ts=NOW + 1, signature=good_a)
    add("expired: signed 301 s before now", ts=NOW - 301)
    add("future: signed 301 s after now", ts=NOW + 301)
    add("edge: signed exactly 300 s before now", ts=NOW - 300)
    add("edge: signed exactly 300 s after now", ts=NOW + 300)
    add("replay of a valid delivery 10 minutes later", now=NOW + 600,
        note="the verifier's window stops late replays; replays inside it are deduplicated by webhook-id")
    flipped = good_a[:10] + ("A" if good_a[10] != "A" else "B") + good_a[11:]
    add("replay with a modified signature (one base64 char changed)", signature=flipped)
    add("replay with a truncated signature (last 4 base64 chars cut)", signature=good_a[:-4])
    add("replay with the signature re-sent under webhook-id of another delivery",
        msg_id="wh_685342e6c53c8190a1be43f081506c53", signature=good_a)
    add("missing webhook-id", msg_id=MISSING, signature=good_a)
    add("missing webhook-timestamp", timestamp=MISSING, signature=good_a)
    add("missing webhook-signature", signature=MISSING)
    add("webhook-timestamp not a number", timestamp="yesterday", signature=good_a)
    add("webhook-timestamp far in the past (epoch)", ts=0)
    add("empty secret", secret="whsec_", signature=good_a,
        note="standardwebhooks refuses an empty key; our WebhookVerifier::new gives INVALID_SECRET")
    add("two v1 entries separated by several spaces", signature=f"{other}   {good_a}", signed_by_secret=True,
        expected_from="openai",
        note="standardwebhooks 1.1.0 splits on single spaces and crashes (ValueError) on the empty entry; "
             "the openai SDK (OpenAI's own verifier) splits on any whitespace and accepts")
    unpadded = SECRET_A.rstrip("=")
    add("secret written without base64 padding", secret=unpadded, expected_from="standardwebhooks",
        note="standardwebhooks appends padding before decoding and accepts; the openai SDK's b64decode raises "
             "'Incorrect padding'. OpenAI issues padded secrets; we accept both")
    return out


def judge(vs):
    """Fill in the verdicts; returns the number of unexplained oracle disagreements."""
    bad = 0
    for v in vs:
        sw, sw_code = sw_verdict(v)
        oa, oa_code = oa_verdict(v) if v["secret"] != "whsec_" else ("secret refused", "INVALID_SECRET")
        v["oracles"] = {"standardwebhooks": sw, "openai": oa}
        follow = v.get("expected_from")
        if follow is None:
            if (sw == "accept") != (oa == "accept") or sw_code != oa_code or sw_code == "?":
                bad += 1
                print(f"FAIL  oracles disagree on {v['name']!r}: standardwebhooks={sw!r} openai={oa!r}")
            code = sw_code
        else:
            code = sw_code if follow == "standardwebhooks" else oa_code
            verdict = sw if follow == "standardwebhooks" else oa
            if code == "?" or verdict.startswith("crash"):
                bad += 1
                print(f"FAIL  the oracle we follow ({follow}) has no verdict on {v['name']!r}: {verdict!r}")
        v["expect"] = "accept" if code is None else "reject"
        v["error"] = code
    return bad


def check_event():
    """The sample body is a valid RealtimeCallIncomingWebhookEvent (strict, no unknown keys)."""
    ev = RealtimeCallIncomingWebhookEvent.model_validate_json(BODY, strict=True)

    def extras(m, path="$"):
        out = []
        if isinstance(m, pydantic.BaseModel):
            out += [f"{path}.{k}" for k in (m.__pydantic_extra__ or {})]
            for n in type(m).model_fields:
                out += extras(getattr(m, n), f"{path}.{n}")
        elif isinstance(m, (list, tuple)):
            for i, x in enumerate(m):
                out += extras(x, f"{path}[{i}]")
        return out

    unknown = extras(ev)
    if unknown:
        print(f"FAIL  sample event has fields the SDK model does not know: {unknown}")
        return 1
    print(f"ok    sample body validates as RealtimeCallIncomingWebhookEvent (strict): call_id={ev.data.call_id}, "
          f"{len(ev.data.sip_headers)} SIP headers")
    return 0


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("out", help="where to write the vectors (JSON)")
    ap.add_argument("--compare", help="fail unless this checked-in vectors file equals the generated one")
    args = ap.parse_args(argv[1:])

    rc = check_event()
    up = sign(UPSTREAM["secret"], UPSTREAM["id"], UPSTREAM["timestamp"], UPSTREAM["body"])
    if up != UPSTREAM["signature"]:
        print(f"FAIL  standardwebhooks no longer reproduces the upstream vector: {up}")
        rc = 1
    vs = vectors()
    if judge(vs):
        rc = 1
    doc = {
        "generator": "conformance/check_webhooks.py",
        "oracles": {"standardwebhooks": "1.1.0", "openai": openai.__version__},
        "tolerance_secs": TOLERANCE,
        "vectors": vs,
    }
    text = json.dumps(doc, indent=1, ensure_ascii=False) + "\n"
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text)
    n_acc = sum(v["expect"] == "accept" for v in vs)
    print(f"standardwebhooks {getattr(standardwebhooks, '__version__', '1.1.0')}, openai {openai.__version__}: "
          f"{len(vs)} vectors ({n_acc} accept, {len(vs) - n_acc} reject) -> {args.out}")
    for v in vs:
        flag = f"  [follows {v['expected_from']}]" if v.get("expected_from") else ""
        print(f"  {v['expect']:6s} {v['error'] or '':22s} {v['name']}{flag}")
    if args.compare:
        try:
            with open(args.compare, encoding="utf-8") as f:
                checked_in = f.read()
        except OSError as e:
            print(f"FAIL  cannot read {args.compare}: {e}")
            return 1
        if json.loads(checked_in) != doc:
            print(f"FAIL  {args.compare} differs from the generated vectors; regenerate it with:\n"
                  f"      .venv/bin/python conformance/check_webhooks.py {args.compare}")
            rc = 1
        else:
            print(f"ok    {args.compare} matches the generated vectors")
    if rc:
        print("check_webhooks: FAILED")
    else:
        print("check_webhooks: all vectors judged; both oracles agree where expected")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv))
