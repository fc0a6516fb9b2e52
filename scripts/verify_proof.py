#!/usr/bin/env python3
"""Checks an auditlake inclusion proof with Python's standard library only.

    curl -s -H "Authorization: Bearer $TOKEN" \
        http://127.0.0.1:8080/v1/orgs/acme/events/EVENT_ID/proof > proof.json
    python3 verify_proof.py proof.json --checkpoint published.json --public-key signing.key.pub

1. The event's leaf is encoded as auditlake's canonical encoding (version 1)
   defines it (ARCHITECTURE.md, "Tamper evidence") and hashed (RFC 6962).
2. The audit path is climbed to a root (RFC 9162, section 2.1.3.2).
3. The root must be the checkpoint's. With --checkpoint, that is a
   checkpoint line the auditor holds (published elsewhere, or copied from
   integrity/checkpoints.jsonl); without it, the proof's own copy is used.
4. The checkpoint's Ed25519 signature (RFC 8032) must hold, for the key of
   --public-key when given.

Exits 0 and prints "ok: ..." when all hold; exits 1 naming the first failure.
"""

import argparse
import hashlib
import json
import struct
import sys

LEAF_DOMAIN = b"auditlake event v1\0"
PLAIN_FIELDS = [
    "id", "org_id", "actor_id", "actor_name", "actor_type", "action", "category", "outcome",
    "product", "content_type", "source_ip", "user_agent", "location", "session_id", "request_id",
]


def text(value):
    if value is None:
        return b"\x00"
    data = value.encode("utf-8")
    return b"\x01" + struct.pack(">I", len(data)) + data


def leaf_hash(leaf):
    data = LEAF_DOMAIN + struct.pack(">qqq", leaf["seq"], leaf["time_us"], leaf["received_at_us"])
    for name in PLAIN_FIELDS:
        data += text(leaf["fields"][name])
    data += bytes.fromhex(leaf["ugc_digest"])
    return hashlib.sha256(b"\x00" + data).digest()


def node(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


def root_from_path(index, size, leaf, path):
    if index >= size:
        return None
    fn, sn, r = index, size - 1, leaf
    for sibling in path:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = node(sibling, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node(r, sibling)
        fn >>= 1
        sn >>= 1
    return r if sn == 0 else None


def signed_message(c):
    removal = ""
    if c.get("removal"):
        r = c["removal"]
        removal = f"{json.dumps(r['org'], ensure_ascii=False)}\n{r['before']}\n{r['count']}\n"
    return (
        f"auditlake checkpoint v1\n{c['index']}\n{c.get('kind', 'events')}\n{c['first_seq']}\n{c['last_seq']}\n"
        f"{c['root']}\n{removal}{c['prev']}\n{c['written_at']}\n{c['public_key']}\n"
    ).encode()


# Ed25519 verification (RFC 8032, section 5.1.7) over the twisted Edwards
# curve -x^2 + y^2 = 1 + d x^2 y^2 modulo 2^255 - 19, in extended coordinates.
P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = -121665 * pow(121666, P - 2, P) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)


def point_add(a, b):
    x1, y1, z1, t1 = a
    x2, y2, z2, t2 = b
    e = (y1 - x1) * (y2 - x2) % P
    f = (y1 + x1) * (y2 + x2) % P
    g = 2 * t1 * t2 * D % P
    h = 2 * z1 * z2 % P
    e, f, g, h = f - e, h - g, h + g, f + e
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def scalar_mult(k, point):
    result = (0, 1, 1, 0)
    while k:
        if k & 1:
            result = point_add(result, point)
        point = point_add(point, point)
        k >>= 1
    return result


def decode_point(data):
    if len(data) != 32:
        return None
    y = int.from_bytes(data, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    if y >= P:
        return None
    x2 = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P:
        x = x * SQRT_M1 % P
    if (x * x - x2) % P:
        return None
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = P - x
    return (x, y, 1, x * y % P)


def encode_point(point):
    x, y, z, _ = point
    zi = pow(z, P - 2, P)
    x, y = x * zi % P, y * zi % P
    return int.to_bytes(y | ((x & 1) << 255), 32, "little")


BASE = decode_point(int.to_bytes(4 * pow(5, P - 2, P) % P, 32, "little"))


def ed25519_verify(public, message, signature):
    if len(signature) != 64:
        return False
    a, r = decode_point(public), decode_point(signature[:32])
    s = int.from_bytes(signature[32:], "little")
    if a is None or r is None or s >= L:
        return False
    h = int.from_bytes(hashlib.sha512(signature[:32] + public + message).digest(), "little") % L
    return encode_point(scalar_mult(s, BASE)) == encode_point(point_add(r, scalar_mult(h, a)))


def fail(message):
    print(f"FAILED: {message}")
    sys.exit(1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("proof", help="the proof JSON (GET /v1/orgs/ORG/events/ID/proof)")
    parser.add_argument("--checkpoint", help="a checkpoint line (JSON) the auditor trusts")
    parser.add_argument("--public-key", help="the signing key's public half: hex, or a file holding it")
    args = parser.parse_args()
    with open(args.proof) as f:
        proof = json.load(f)
    checkpoint = proof["checkpoint"]
    if args.checkpoint:
        with open(args.checkpoint) as f:
            trusted = json.loads(f.read().strip().splitlines()[-1])
        if trusted != checkpoint:
            fail(f"the proof is for checkpoint {checkpoint['index']} as it states, not the one trusted "
                 f"(index {trusted['index']}, root {trusted['root']})")
    public = args.public_key
    if public:
        try:
            with open(public) as f:
                public = f.read().strip()
        except OSError:
            pass
        if public != checkpoint["public_key"]:
            fail(f"checkpoint {checkpoint['index']} is signed by {checkpoint['public_key']}, not by {public}")
    if not ed25519_verify(bytes.fromhex(checkpoint["public_key"]), signed_message(checkpoint),
                          bytes.fromhex(checkpoint["signature"])):
        fail(f"the signature of checkpoint {checkpoint['index']} does not hold")
    leaf = proof["leaf"]
    if leaf["seq"] - checkpoint["first_seq"] != proof["leaf_index"] or \
            checkpoint["last_seq"] - checkpoint["first_seq"] + 1 != proof["tree_size"]:
        fail("the leaf index or tree size does not match the checkpoint's range")
    root = root_from_path(proof["leaf_index"], proof["tree_size"], leaf_hash(leaf),
                          [bytes.fromhex(h) for h in proof["path"]])
    if root is None or root.hex() != checkpoint["root"]:
        fail(f"event seq {leaf['seq']} does not lead to the root of checkpoint {checkpoint['index']}")
    print(f"ok: event seq {leaf['seq']} (id {leaf['fields']['id']}) is included in checkpoint "
          f"{checkpoint['index']} (seqs {checkpoint['first_seq']}..={checkpoint['last_seq']}), "
          f"signed by {checkpoint['public_key']}")


if __name__ == "__main__":
    main()
