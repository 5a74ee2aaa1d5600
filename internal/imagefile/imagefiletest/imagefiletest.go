// Package imagefiletest writes PNG files by hand — any header, any pixel data — for the tests
// of imagefile and the hostile images of scripts/malicious.
package imagefiletest

import (
	"encoding/binary"
	"hash/crc32"
)

// Chunk appends one PNG chunk: length, type, data, CRC of type and data.
func Chunk(b []byte, typ string, data []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	start := len(b)
	b = append(append(b, typ...), data...)
	return binary.BigEndian.AppendUint32(b, crc32.ChecksumIEEE(b[start:]))
}

// PNG is a PNG whose IHDR declares w×h at the given bit depth and colour type, with idat as its
// compressed pixel data (not necessarily as much as the declared size needs).
func PNG(w, h uint32, depth, colorType byte, idat []byte) []byte {
	ihdr := binary.BigEndian.AppendUint32(nil, w)
	ihdr = binary.BigEndian.AppendUint32(ihdr, h)
	ihdr = append(ihdr, depth, colorType, 0, 0, 0)
	b := Chunk([]byte("\x89PNG\r\n\x1a\n"), "IHDR", ihdr)
	b = Chunk(b, "IDAT", idat)
	return Chunk(b, "IEND", nil)
}
