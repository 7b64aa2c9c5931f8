#!/usr/bin/env python3
"""Checks a Rempart history bundle with Python's standard library alone.

    python3 verify_bundle.py BUNDLE.json 'origin+hhhhhhhh+base64key'

A bundle (`rempart audit history --bundle`, or a person's own page) holds
a signed checkpoint and, for each entry, the leaf's bytes and its
inclusion proof. This script shares no code with Rempart: it checks the
checkpoint's Ed25519 signature under the ledger's public key (C2SP signed
note), each proof against the checkpoint's root (RFC 9162 section
2.1.3.2), and that each leaf is about the bundle's person and that the
entries are newest first. Exit status 0 only if all of it holds.
"""

import base64
import hashlib
import json
import sys

# --- Ed25519 verification (RFC 8032 section 5.1.7), in extended coordinates.
P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = -121665 * pow(121666, P - 2, P) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)


def _x(y, sign):
    if y >= P:
        return None
    x2 = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P:
        x = x * SQRT_M1 % P
    if (x * x - x2) % P:
        return None
    return P - x if (x & 1) != sign else x


def _add(a, b):
    e = (a[1] - a[0]) * (b[1] - b[0]) % P
    f = (a[1] + a[0]) * (b[1] + b[0]) % P
    g = 2 * a[3] * b[3] * D % P
    h = 2 * a[2] * b[2] % P
    e, f, g, h = f - e, h - g, h + g, f + e
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _mul(s, pt):
    acc = (0, 1, 1, 0)
    while s:
        if s & 1:
            acc = _add(acc, pt)
        pt, s = _add(pt, pt), s >> 1
    return acc


def _point(b):
    if len(b) != 32:
        return None
    y = int.from_bytes(b, "little")
    x = _x(y & ((1 << 255) - 1), y >> 255)
    if x is None:
        return None
    y &= (1 << 255) - 1
    return (x, y, 1, x * y % P)


_GY = 4 * pow(5, P - 2, P) % P
_G = (_x(_GY, 0), _GY, 1, _x(_GY, 0) * _GY % P)


def ed25519_verify(public, message, signature):
    a, r = _point(public), _point(signature[:32])
    if a is None or r is None or len(signature) != 64:
        return False
    s = int.from_bytes(signature[32:], "little")
    if s >= L:
        return False
    h = int.from_bytes(hashlib.sha512(signature[:32] + public + message).digest(), "little") % L
    left, right = _mul(s, _G), _add(r, _mul(h, a))
    return (left[0] * right[2] - right[0] * left[2]) % P == 0 and (
        left[1] * right[2] - right[1] * left[2]
    ) % P == 0


# --- The signed checkpoint (c2sp.org/signed-note, c2sp.org/tlog-checkpoint).
def open_checkpoint(note, verifier_key):
    name, key_id, encoded = verifier_key.strip().split("+", 2)
    raw = base64.b64decode(encoded)
    if raw[:1] != b"\x01":
        raise ValueError("verifier key: not an Ed25519 key")
    if hashlib.sha256(name.encode() + b"\n" + raw).digest()[:4].hex() != key_id:
        raise ValueError("verifier key: its key ID does not match the key")
    text, sep, signatures = note.partition("\n\n")
    if not sep:
        raise ValueError("checkpoint: not a signed note")
    text += "\n"
    signed = False
    for line in signatures.splitlines():
        if not line.startswith("\u2014 "):
            raise ValueError("checkpoint: malformed signature line")
        who, blob = line[2:].split(" ")
        blob = base64.b64decode(blob)
        if who == name and blob[:4].hex() == key_id:
            signed = signed or ed25519_verify(raw[1:], text.encode(), blob[4:])
    if not signed:
        raise ValueError("checkpoint: no valid signature by the trusted key")
    origin, size, root = text.split("\n")[:3]
    if origin != name:
        raise ValueError("checkpoint: its origin is not the key's name")
    return int(size), base64.b64decode(root)


# --- RFC 9162: hashes and inclusion.
def node(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


def root_from_inclusion(leaf, index, size, proof):
    if index >= size:
        raise ValueError("index beyond the tree")
    f, s, r = index, size - 1, hashlib.sha256(b"\x00" + leaf).digest()
    for p in proof:
        if s == 0:
            raise ValueError("proof too long")
        if f & 1 or f == s:
            r = node(p, r)
            while not f & 1 and f:
                f, s = f >> 1, s >> 1
        else:
            r = node(r, p)
        f, s = f >> 1, s >> 1
    if s:
        raise ValueError("proof too short")
    return r


# --- The leaf (format 1): version, time, account, organisation, session,
# person, then the rest. Only what this check needs is read.
def leaf_fields(leaf):
    if leaf[:1] != b"\x01":
        raise ValueError("leaf: unknown format")
    time = int.from_bytes(leaf[1:9], "big", signed=True)
    at = 25 + (17 if leaf[25] == 1 else 1)
    person = int.from_bytes(leaf[at + 1 : at + 9], "big", signed=True) if leaf[at] == 1 else None
    return time, person


def main(path, verifier_key):
    bundle = json.load(open(path, encoding="utf-8"))
    if bundle.get("format") != "rempart-access-bundle/1":
        raise ValueError("not a Rempart history bundle")
    size, root = open_checkpoint(bundle["checkpoint"], verifier_key)
    previous = None
    for n, entry in enumerate(bundle["entries"], 1):
        leaf = base64.b64decode(entry["leaf"])
        proof = [base64.b64decode(h) for h in entry["proof"]]
        if root_from_inclusion(leaf, entry["index"], size, proof) != root:
            raise ValueError(f"entry {n}: not in the log the checkpoint signs")
        time, person = leaf_fields(leaf)
        if person != bundle["person"]:
            raise ValueError(f"entry {n}: not about person {bundle['person']}")
        if previous is not None and previous <= (time, entry["index"]):
            raise ValueError(f"entry {n}: entries must be distinct and newest first")
        previous = (time, entry["index"])
    print(
        f"OK: {len(bundle['entries'])} entries of person {bundle['person']}, "
        f"each in the log of size {size} whose checkpoint the key signed"
    )


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    try:
        main(sys.argv[1], sys.argv[2])
    except (ValueError, KeyError, IndexError, TypeError) as e:
        sys.exit(f"refused: {e}")
