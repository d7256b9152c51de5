"""Write G.711 reference tables with CPython's audioop (Sun's reference g711 code).

Run with Python <= 3.12 (audioop was removed in 3.13):
    python3 tools/g711_reference.py > crates/audio/tests/data/g711_reference.txt
Lines: "ulaw_dec <code> <linear>", "alaw_dec <code> <linear>",
       "ulaw_enc <linear> <code>", "alaw_enc <linear> <code>".
"""
import struct
import warnings

warnings.simplefilter("ignore", DeprecationWarning)
import audioop  # noqa: E402

for code in range(256):
    (lin,) = struct.unpack("<h", audioop.ulaw2lin(bytes([code]), 2))
    print("ulaw_dec", code, lin)
for code in range(256):
    (lin,) = struct.unpack("<h", audioop.alaw2lin(bytes([code]), 2))
    print("alaw_dec", code, lin)
for lin in list(range(-32768, 32768, 97)) + [-32768, -1, 0, 1, 7, 8, 32767]:
    pcm = struct.pack("<h", lin)
    print("ulaw_enc", lin, audioop.lin2ulaw(pcm, 2)[0])
    print("alaw_enc", lin, audioop.lin2alaw(pcm, 2)[0])
