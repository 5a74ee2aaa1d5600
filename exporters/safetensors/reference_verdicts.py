"""Reference verdicts for models/safetensors' header validation.

Builds each case below as a file, opens it with huggingface/safetensors (the Rust
implementation behind the `safetensors` Python package, pinned in exporters/requirements.txt)
and records whether it accepts the file and with which error. The Go test
(models/safetensors/reference_test.go) builds the same files and requires the same verdict,
except for the cases listed there where the project is stricter on purpose.

Run from the repository root:
    .venv/bin/python exporters/safetensors/reference_verdicts.py
"""

import base64
import json
import os
import struct
import sys
import tempfile

import safetensors
from safetensors import safe_open

OUT = "models/safetensors/testdata/reference_verdicts.json"


def entry(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def j(obj):
    return json.dumps(obj, separators=(",", ":"))


ONES_100 = ",".join(["1"] * 100)
ONES_2000 = ",".join(["1"] * 2000)

# (name, header text or bytes, data length, declared header length or None)
CASES = [
    ("valid F32", j({"a": entry("F32", [2, 2], 0, 16)}), 16, None),
    ("valid two tensors any order", '{"b":{"dtype":"F16","shape":[2],"data_offsets":[8,12]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', 12, None),
    ("valid empty header", "{}", 0, None),
    ("valid metadata", j({"__metadata__": {"format": "pt"}, "a": entry("F32", [1], 0, 4)}), 4, None),
    ("valid null metadata", '{"__metadata__":null}', 0, None),
    ("valid scalar", j({"a": entry("F64", [], 0, 8)}), 8, None),
    ("valid zero-size tensors at one offset", '{"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"b":{"dtype":"F32","shape":[0,5],"data_offsets":[0,0]}}', 0, None),
    ("valid every dtype", None, None, None),  # filled below
    ("valid F4 whole bytes", j({"a": entry("F4", [4], 0, 2)}), 2, None),
    ("valid unknown field ignored", '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"extra":[1,{"z":null}]}}', 4, None),
    ("valid whitespace around the object", '  {"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}  \n', 4, None),
    ("valid escaped name", '{"a\\u0062":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', 4, None),
    ("valid rank 100", '{"a":{"dtype":"F32","shape":[' + ONES_100 + '],"data_offsets":[0,4]}}', 4, None),
    ("valid empty name", '{"":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', 4, None),
    ("overlapping offsets", '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', 4, None),
    ("partly overlapping offsets", '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}', 12, None),
    ("gap before the first tensor", j({"a": entry("F32", [1], 4, 8)}), 8, None),
    ("gap between tensors", '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}', 12, None),
    ("end before begin", j({"a": entry("F32", [0], 4, 0)}), 4, None),
    ("span differs from shape", j({"a": entry("F32", [2], 0, 4)}), 4, None),
    ("trailing data bytes", j({"a": entry("F32", [1], 0, 4)}), 8, None),
    ("truncated data", j({"a": entry("F32", [4], 0, 16)}), 10, None),
    ("element count overflows", j({"a": entry("F32", [4294967296, 4294967296], 0, 0)}), 0, None),
    ("element count overflows before a zero", j({"a": entry("F32", [4294967296, 4294967296, 0], 0, 0)}), 0, None),
    ("byte size overflows (2^62 F32)", j({"a": entry("F32", [4611686018427387904], 0, 0)}), 0, None),
    ("bits not whole bytes (3 x F4)", j({"a": entry("F4", [3], 0, 2)}), 2, None),
    ("unknown dtype", j({"a": entry("F128", [1], 0, 16)}), 16, None),
    ("lower-case dtype", j({"a": entry("f32", [1], 0, 4)}), 4, None),
    ("fractional dimension", '{"a":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}}', 4, None),
    ("exponent dimension", '{"a":{"dtype":"F32","shape":[1e0],"data_offsets":[0,4]}}', 4, None),
    ("negative dimension", '{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}', 4, None),
    ("string dimension", '{"a":{"dtype":"F32","shape":["1"],"data_offsets":[0,4]}}', 4, None),
    ("one offset", '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0]}}', 4, None),
    ("three offsets", '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4,4]}}', 4, None),
    ("offset beyond 2^64", '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,18446744073709551616]}}', 4, None),
    ("missing shape", '{"a":{"dtype":"F32","data_offsets":[0,4]}}', 4, None),
    ("missing dtype", '{"a":{"shape":[1],"data_offsets":[0,4]}}', 4, None),
    ("missing data_offsets", '{"a":{"dtype":"F32","shape":[1]}}', 4, None),
    ("entry is null", '{"a":null}', 0, None),
    ("entry is an array", '{"a":[]}', 0, None),
    ("header is an array", "[]", 0, None),
    ("header is empty", "", 0, None),
    ("header is not JSON", "{\"a\":", 0, None),
    ("trailing characters after the header", '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}} x', 4, None),
    ("two objects", "{}{}", 0, None),
    ("metadata value not a string", '{"__metadata__":{"a":1}}', 0, None),
    ("metadata not an object", '{"__metadata__":"x"}', 0, None),
    ("duplicate field in an entry", '{"a":{"dtype":"F32","dtype":"F16","shape":[1],"data_offsets":[0,4]}}', 4, None),
    ("duplicate __metadata__", '{"__metadata__":{"x":"1"},"__metadata__":{"y":"2"}}', 0, None),
    ("invalid UTF-8 in a name", b'{"\xff":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', 4, None),
    ("header length beyond the file", "{}", 0, 1 << 40),
    ("header length above 100 MB", "{}", 0, 100_000_001),
    # Stricter here on purpose (see reference_test.go): duplicate names, long shapes, huge dims.
    ("duplicate name, same bytes", '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', 4, None),
    ("duplicate name, other bytes", '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', 8, None),
    ("duplicate name, last wins a different dtype", '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]},"a":{"dtype":"I32","shape":[2],"data_offsets":[0,8]}}', 12, None),
    ("duplicate name after unescaping", '{"ab":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a\\u0062":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', 4, None),
    ("duplicate key in metadata", '{"__metadata__":{"x":"1","x":"2"}}', 0, None),
    ("rank 2000", '{"a":{"dtype":"F32","shape":[' + ONES_2000 + '],"data_offsets":[0,4]}}', 4, None),
    ("dimension beyond int64 times zero", '{"a":{"dtype":"F32","shape":[18446744073709551615,0],"data_offsets":[0,0]}}', 0, None),
]

# Every dtype of the reference, one tensor each, laid out in order.
_dtypes = [("BOOL", 1), ("U8", 1), ("I8", 1), ("F8_E5M2", 1), ("F8_E4M3", 1), ("F8_E8M0", 1),
           ("F8_E4M3FNUZ", 1), ("F8_E5M2FNUZ", 1), ("I16", 2), ("U16", 2), ("F16", 2), ("BF16", 2),
           ("I32", 4), ("U32", 4), ("F32", 4), ("C64", 8), ("F64", 8), ("I64", 8), ("U64", 8)]
_hdr, _off = {}, 0
for _name, _size in _dtypes:
    _hdr["t_" + _name] = entry(_name, [3], _off, _off + 3 * _size)
    _off += 3 * _size
_hdr["t_F6_E2M3"] = entry("F6_E2M3", [4], _off, _off + 3)
_hdr["t_F6_E3M2"] = entry("F6_E3M2", [4], _off + 3, _off + 6)
_off += 6
CASES = [(n, j(_hdr), _off, None) if n == "valid every dtype" else (n, h, d, l) for n, h, d, l in CASES]


def build(header, data_len, declared):
    h = header.encode() if isinstance(header, str) else header
    n = len(h) if declared is None else declared
    return struct.pack("<Q", n) + h + b"\0" * data_len


def verdict(path):
    try:
        with safe_open(path, "np") as f:
            list(f.keys())
        return None
    except Exception as e:  # the reference's SafetensorError, one line
        return " ".join(str(e).split())


def main():
    out = []
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "case.safetensors")
        for name, header, data_len, declared in CASES:
            with open(path, "wb") as f:
                f.write(build(header, data_len, declared))
            case = {"name": name, "data_len": data_len}
            if isinstance(header, bytes):
                case["header_b64"] = base64.b64encode(header).decode()
            else:
                case["header"] = header
            if declared is not None:
                case["declared_len"] = declared
            err = verdict(path)
            case["reference_accepts"] = err is None
            if err is not None:
                case["reference_error"] = err
            out.append(case)
    doc = {"reference": f"safetensors {safetensors.__version__} (Python package, Rust core)", "cases": out}
    with open(OUT, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"wrote {len(out)} cases to {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
