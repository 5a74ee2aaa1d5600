package safetensors

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// referenceCase is one file of testdata/reference_verdicts.json, written by
// exporters/safetensors/reference_verdicts.py with huggingface/safetensors' verdict on it.
type referenceCase struct {
	Name             string `json:"name"`
	Header           string `json:"header"`
	HeaderB64        string `json:"header_b64"`
	DataLen          int    `json:"data_len"`
	DeclaredLen      *int64 `json:"declared_len"`
	ReferenceAccepts bool   `json:"reference_accepts"`
	ReferenceError   string `json:"reference_error"`
}

// stricter are the cases the reference accepts and this package refuses on purpose (see
// header.go), with what the error must say.
var stricter = map[string]string{
	"duplicate name, same bytes":                  `name "a" appears twice`,
	"duplicate name, last wins a different dtype": `name "a" appears twice`,
	"duplicate name after unescaping":             `name "ab" appears twice`,
	"duplicate key in metadata":                   `__metadata__: key "x" appears twice`,
	"rank 2000":                                   "more than 1024 dimensions",
	"dimension beyond int64 times zero":           "want an integer in [0, 9223372036854775807]",
}

// wantError pins what some refusals say, beyond agreeing with the reference that they fail.
var wantError = map[string]string{
	"overlapping offsets":                   `tensor "b": data_offsets [0 4] overlap tensor "a" at [0 4]`,
	"partly overlapping offsets":            `tensor "b": data_offsets [4 12] overlap tensor "a" at [0 8]`,
	"gap before the first tensor":           `tensor "a": data_offsets [4 8] leave 4 unused bytes after the start of the data section`,
	"gap between tensors":                   `tensor "b": data_offsets [8 12] leave 4 unused bytes after tensor "a"`,
	"end before begin":                      `tensor "a": data_offsets [4 0] end before they begin`,
	"span differs from shape":               `tensor "a": F32[2] needs 8 bytes, data_offsets [0 4] span 4`,
	"trailing data bytes":                   "the tensors cover 4 bytes of the 8-byte data section",
	"truncated data":                        `tensor "a": data_offsets [0 16] outside data section of 10 bytes`,
	"element count overflows":               `tensor "a": shape [4294967296 4294967296]: element count overflows 64 bits`,
	"element count overflows before a zero": "element count overflows 64 bits",
	"byte size overflows (2^62 F32)":        "F32[4611686018427387904]: size in bits overflows 64 bits",
	"bits not whole bytes (3 x F4)":         "F4[3] is 12 bits, want a whole number of bytes",
	"unknown dtype":                         `tensor "a": dtype: got "F128", want one of BOOL,`,
	"fractional dimension":                  "shape: got 1.0, want an integer",
	"negative dimension":                    "shape: got -1, want an integer",
	"string dimension":                      `shape: got string "1", want a non-negative integer`,
	"one offset":                            "data_offsets has 1 values, want 2",
	"three offsets":                         "data_offsets: more than 2 values",
	"missing shape":                         `tensor "a": missing field "shape"`,
	"entry is null":                         `tensor "a": entry: got null, want an object`,
	"header is an array":                    "header: got an array, want an object",
	"trailing characters after the header":  "after the header object, want only whitespace",
	"metadata value not a string":           `__metadata__: key "a": got number 1, want a string`,
	"duplicate field in an entry":           `tensor "a": field "dtype" appears twice`,
	"duplicate __metadata__":                `name "__metadata__" appears twice`,
	"invalid UTF-8 in a name":               "header is not valid UTF-8",
	"header length beyond the file":         "header length 1099511627776 exceeds the limit of 100000000 bytes",
	"header length above 100 MB":            "header length 100000001 exceeds the limit of 100000000 bytes",
	"header is empty":                       "parse JSON header: unexpected end",
	"offset beyond 2^64":                    "data_offsets: got 18446744073709551616, want an integer in [0, 18446744073709551615]",
	"metadata not an object":                `__metadata__: got string "x", want a map of strings`,
	"missing data_offsets":                  `missing field "data_offsets"`,
	"entry is an array":                     "entry: got an array, want an object",
	"two objects":                           "after the header object",
	"header is not JSON":                    "parse JSON header",
	"exponent dimension":                    "shape: got 1e0",
	"lower-case dtype":                      `dtype: got "f32"`,
	"missing dtype":                         `missing field "dtype"`,
	// Refused by both; the reference blames the offsets, ours the cause.
	"duplicate name, other bytes": `name "a" appears twice`,
}

// TestAgreesWithReference opens every case of the reference verdict file and requires
// huggingface/safetensors' verdict, except the cases in stricter.
func TestAgreesWithReference(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("testdata", "reference_verdicts.json"))
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Reference string          `json:"reference"`
		Cases     []referenceCase `json:"cases"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.Cases) < 50 {
		t.Fatalf("%d reference cases, want the full set", len(doc.Cases))
	}
	seen := map[string]bool{}
	for _, c := range doc.Cases {
		seen[c.Name] = true
		t.Run(c.Name, func(t *testing.T) {
			path := writeCase(t, c)
			f, err := Open(path)
			if err == nil {
				f.Close()
			}
			strict, isStricter := stricter[c.Name]
			switch {
			case err == nil && (c.ReferenceAccepts && !isStricter):
				return
			case err == nil:
				t.Fatalf("Open accepted the file; reference: %s", c.ReferenceError)
			case c.ReferenceAccepts && !isStricter:
				t.Fatalf("Open refused a file the reference accepts: %v", err)
			}
			if !strings.Contains(err.Error(), path) {
				t.Errorf("error %q does not name the file", err)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error %q spans lines", err)
			}
			for _, want := range []string{strict, wantError[c.Name]} {
				if want != "" && !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q (reference: %s)", err, want, c.ReferenceError)
				}
			}
		})
	}
	for name := range stricter {
		if !seen[name] {
			t.Errorf("stricter case %q is not in the reference file", name)
		}
	}
	for name := range wantError {
		if !seen[name] {
			t.Errorf("case %q is not in the reference file", name)
		}
	}
}

// writeCase writes the file of a reference case into a temp dir.
func writeCase(t *testing.T, c referenceCase) string {
	t.Helper()
	hdr := []byte(c.Header)
	if c.HeaderB64 != "" {
		var err error
		if hdr, err = base64.StdEncoding.DecodeString(c.HeaderB64); err != nil {
			t.Fatal(err)
		}
	}
	n := uint64(len(hdr))
	if c.DeclaredLen != nil {
		n = uint64(*c.DeclaredLen)
	}
	var b bytes.Buffer
	binary.Write(&b, binary.LittleEndian, n)
	b.Write(hdr)
	b.Write(make([]byte, c.DataLen))
	path := filepath.Join(t.TempDir(), "case.safetensors")
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}
