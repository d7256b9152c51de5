#!/usr/bin/env python3
"""Generate crates/compliance/src/zone_table.rs from libphonenumber's data (PyPI `phonenumbers`).

Usage (the version is pinned in conformance/requirements.txt):
    python3 -m venv /tmp/zvenv
    /tmp/zvenv/bin/pip install "$(grep '^phonenumbers==' conformance/requirements.txt)"
    /tmp/zvenv/bin/python tools/gen_zone_table.py > crates/compliance/src/zone_table.rs

What it emits (all tables sorted, one entry per line):

* PREFIXES (+ the interned lists ZL): E.164 digit prefix -> candidate IANA zones, i.e. libphonenumber's time-zone map
  (`phonenumbers.tzdata.TIMEZONE_DATA`, the Python copy of resources/timezones/map_data.txt).
  Lookup is "longest prefix wins", exactly like `phonenumbers.timezone`.
* NANP_STATES: NANP area code (NPA) -> USPS two-letter state code, for numbers whose region is
  "US", from `phonenumbers.geocoder.description_for_number` on sample numbers of each area code.
* ORACLE_TZ: example numbers (fixed line + mobile, every region) with the zones that
  `phonenumbers.timezone.time_zones_for_number` returns, so the Rust lookup is tested against
  the reference implementation.

Zone names are normalised with the system tz database (/usr/share/zoneinfo, Debian `tzdata`):
  1. backward links are replaced by their target (Asia/Calcutta -> Asia/Kolkata; `L` lines of tzdata.zi);
  2. inside one entry, zones whose UTC offsets are identical at every instant from 2020 to 2040
     are collapsed into one representative (the member named most often across the whole map,
     ties broken by name), e.g. +44 {Guernsey, Isle_of_Man, Jersey, London} -> {Europe/London},
     and +1's {Grand_Turk, Nassau, New_York, Toronto} -> America/New_York. They give the same
     calling window, so keeping them all would only make messages noisier;
  3. zones the tz database cannot load are dropped (the Rust tests check that every remaining
     zone loads in jiff's bundled tzdb).
"""
import collections
import datetime as dt
import os
import sys
import zoneinfo

import phonenumbers
from phonenumbers import PhoneNumberType, geocoder, timezone
from phonenumbers.tzdata import TIMEZONE_DATA, TIMEZONE_LONGEST_PREFIX

TZDIR = "/usr/share/zoneinfo"

US_STATES = {
    "Alabama": "AL", "Alaska": "AK", "Arizona": "AZ", "Arkansas": "AR", "California": "CA",
    "Colorado": "CO", "Connecticut": "CT", "Delaware": "DE", "Florida": "FL", "Georgia": "GA",
    "Hawaii": "HI", "Idaho": "ID", "Illinois": "IL", "Indiana": "IN", "Iowa": "IA",
    "Kansas": "KS", "Kentucky": "KY", "Louisiana": "LA", "Maine": "ME", "Maryland": "MD",
    "Massachusetts": "MA", "Michigan": "MI", "Minnesota": "MN", "Mississippi": "MS",
    "Missouri": "MO", "Montana": "MT", "Nebraska": "NE", "Nevada": "NV", "New Hampshire": "NH",
    "New Jersey": "NJ", "New Mexico": "NM", "New York": "NY", "North Carolina": "NC",
    "North Dakota": "ND", "Ohio": "OH", "Oklahoma": "OK", "Oregon": "OR", "Pennsylvania": "PA",
    "Rhode Island": "RI", "South Carolina": "SC", "South Dakota": "SD", "Tennessee": "TN",
    "Texas": "TX", "Utah": "UT", "Vermont": "VT", "Virginia": "VA", "Washington": "WA",
    "Washington State": "WA", "West Virginia": "WV", "Wisconsin": "WI", "Wyoming": "WY",
    "Washington D.C.": "DC", "District of Columbia": "DC",
}
USPS = set(US_STATES.values())


def links():
    """backward-link name -> target, from tzdata.zi `L target link` lines."""
    out = {}
    with open(os.path.join(TZDIR, "tzdata.zi"), encoding="utf-8") as f:
        for line in f:
            if line.startswith("L "):
                _, target, link = line.split()
                out[link] = target
    return out


LINKS = links()
# how often each (link-resolved) zone is named in the whole map: picks a group's representative
POPULARITY = collections.Counter(LINKS.get(z, z) for zs in TIMEZONE_DATA.values() for z in zs)
START = int(dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc).timestamp())
END = int(dt.datetime(2040, 1, 1, tzinfo=dt.timezone.utc).timestamp())
_sig_cache = {}


def load(name):
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return None


def offset(tz, ts):
    return dt.datetime.fromtimestamp(ts, tz).utcoffset()


def signature(name):
    """The zone's UTC offset changes (to the second) between START and END."""
    if name in _sig_cache:
        return _sig_cache[name]
    tz = load(name)
    sig = [offset(tz, START)]
    step = 6 * 3600
    prev_t, prev = START, sig[0]
    for t in range(START + step, END, step):
        cur = offset(tz, t)
        if cur != prev:
            lo, hi = prev_t, t  # offset(lo) == prev, offset(hi) != prev
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if offset(tz, mid) == prev:
                    lo = mid
                else:
                    hi = mid
            sig.append((hi, cur))
        prev_t, prev = t, cur
    _sig_cache[name] = tuple(sig)
    return _sig_cache[name]


def normalise(zones):
    """Apply links, drop unknown zones, collapse zones that behave identically."""
    names = []
    for z in zones:
        z = LINKS.get(z, z)
        if load(z) is None:
            print(f"warning: dropping unknown zone {z}", file=sys.stderr)
            continue
        if z not in names:
            names.append(z)
    if len(names) <= 1:
        return tuple(names)
    groups = collections.OrderedDict()
    for z in names:
        groups.setdefault(signature(z), []).append(z)
    out = []
    for members in groups.values():
        out.append(min(members, key=lambda m: (-POPULARITY[m], m)))
    return tuple(sorted(out))


def nanp_states():
    states = {}
    for npa in range(200, 1000):
        votes = collections.Counter()
        for exchange in range(200, 1000, 7):
            num = phonenumbers.parse(f"+1{npa}{exchange}1234")
            if not phonenumbers.is_valid_number(num):
                continue
            if phonenumbers.region_code_for_number(num) != "US":
                break  # area codes do not span regions
            desc = geocoder.description_for_number(num, "en")
            code = None
            if desc in US_STATES:
                code = US_STATES[desc]
            elif len(desc) > 4 and desc[-4:-2] == ", " and desc[-2:] in USPS:
                code = desc[-2:]
            if code:
                votes[code] += 1
            if sum(votes.values()) >= 8:
                break
        if votes:
            if len(votes) > 1:
                print(f"warning: area code {npa} maps to several states {dict(votes)}", file=sys.stderr)
            states[npa] = votes.most_common(1)[0][0]
    return states


def oracle():
    out = {}
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in (PhoneNumberType.FIXED_LINE, PhoneNumberType.MOBILE):
            num = phonenumbers.example_number_for_type(region, kind)
            if num is None or not phonenumbers.is_valid_number(num):
                continue
            zones = timezone.time_zones_for_number(num)
            if zones == (timezone.UNKNOWN_TIMEZONE,):
                continue
            e164 = phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164)
            out[e164] = normalise(zones)
    return out


def rs_str_list(names):
    return "&[" + ", ".join(f'"{n}"' for n in names) + "]"


def main():
    version = phonenumbers.__version__
    table = {}
    for prefix, zones in TIMEZONE_DATA.items():
        norm = normalise(zones)
        if norm:
            table[prefix] = norm
    lists = sorted(set(table.values()))
    list_id = {zs: i for i, zs in enumerate(lists)}
    states = nanp_states()
    vectors = oracle()

    w = sys.stdout.write
    w(f"// @generated by tools/gen_zone_table.py from phonenumbers {version}; do not edit\n")
    w("//\n")
    w("// Data: libphonenumber (https://github.com/google/libphonenumber), Apache-2.0,\n")
    w("// Copyright (C) 2011-2026 The Libphonenumber Authors; via the Python port `phonenumbers`.\n")
    w("// Zone names normalised with the tz database (see the script's docstring).\n\n")
    w('/// The `phonenumbers` release the tables were generated from.\n')
    w(f'pub const PHONENUMBERS_VERSION: &str = "{version}";\n\n')
    w("/// Longest prefix (in digits) in [`PREFIXES`].\n")
    w(f"pub(crate) const ZONE_PREFIX_MAX_LEN: usize = {TIMEZONE_LONGEST_PREFIX};\n\n")
    w("/// Distinct candidate-zone lists; [`PREFIXES`] points into this.\n")
    w("static ZL: &[&[&str]] = &[\n")
    for zs in lists:
        w(f"    {rs_str_list(zs)},\n")
    w("];\n\n")
    w("/// E.164 digit prefix (country code first, no `+`) -> index into [`ZL`], sorted by prefix.\n")
    w("static PREFIXES: &[(&str, u16)] = &[\n")
    for prefix in sorted(table):
        w(f'    ("{prefix}", {list_id[table[prefix]]}),\n')
    w("];\n\n")
    w("/// Candidate zones for an exact digit prefix, if the map has that prefix.\n")
    w("pub(crate) fn zones_for_prefix(prefix: &str) -> Option<&'static [&'static str]> {\n")
    w("    PREFIXES\n")
    w("        .binary_search_by(|(p, _)| (*p).cmp(prefix))\n")
    w("        .ok()\n")
    w("        .and_then(|i| ZL.get(usize::from(PREFIXES[i].1)).copied())\n")
    w("}\n\n")
    w("/// Every (prefix, zones) entry, for tests.\n")
    w("#[cfg(test)]\n")
    w("pub(crate) fn all_prefixes() -> impl Iterator<Item = (&'static str, &'static [&'static str])> {\n")
    w("    PREFIXES.iter().filter_map(|(p, i)| ZL.get(usize::from(*i)).map(|z| (*p, *z)))\n")
    w("}\n\n")
    w("/// NANP area code (US numbers only) -> USPS state code, sorted by area code.\n")
    w("pub(crate) static NANP_STATES: &[(u16, &str)] = &[\n")
    for npa in sorted(states):
        w(f'    ({npa}, "{states[npa]}"),\n')
    w("];\n\n")
    w("/// Example numbers and what `phonenumbers.timezone.time_zones_for_number` says (normalised).\n")
    w("#[cfg(test)]\n")
    w("pub(crate) static ORACLE_TZ: &[(&str, &[&str])] = &[\n")
    for e164 in sorted(vectors):
        w(f'    ("{e164}", {rs_str_list(vectors[e164])}),\n')
    w("];\n")


if __name__ == "__main__":
    main()
