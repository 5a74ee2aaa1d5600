package limitfile

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRead(t *testing.T) {
	dir := t.TempDir()
	small := filepath.Join(dir, "config.json")
	if err := os.WriteFile(small, []byte(`{"a": 1}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if data, err := Read(small, 8, "a JSON config"); err != nil || string(data) != `{"a": 1}` {
		t.Errorf("file of exactly the limit: %q, %v", data, err)
	}
	_, err := Read(small, 7, "a JSON config")
	if err == nil || err.Error() != small+": 8 bytes, want at most 7 bytes for a JSON config" {
		t.Errorf("file past the limit: %v", err)
	}
	// A sparse 2 GiB file is refused from its size, before any byte is read.
	big := filepath.Join(dir, "index.json")
	f, err := os.Create(big)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(2 << 30); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, err := Read(big, Index, "a safetensors index"); err == nil || err.Error() != big+": 2147483648 bytes, want at most 64 MiB for a safetensors index" {
		t.Errorf("2 GiB index: %v", err)
	}
	if _, err := Read(filepath.Join(dir, "missing.json"), Config, "a JSON config"); !os.IsNotExist(err) {
		t.Errorf("missing file: %v, want a not-exist error", err)
	}
}

// A file whose size says nothing (a device: /dev/zero is endless) is stopped at the limit.
func TestOpenStopsAtLimit(t *testing.T) {
	f, err := Open("/dev/zero", 1000, "a JSON config")
	if err != nil {
		t.Skip("no /dev/zero:", err)
	}
	defer f.Close()
	n, err := io.Copy(io.Discard, f)
	if err == nil || n != 1001 || !strings.Contains(err.Error(), "/dev/zero: more than 1000 bytes to read") {
		t.Errorf("endless file: read %d bytes, error %v; want the limit's error after 1001", n, err)
	}
}

func TestSize(t *testing.T) {
	for n, want := range map[int64]string{1 << 20: "1 MiB", 64 << 20: "64 MiB", 1500: "1500 bytes", 3 << 30: "3 GiB", 2048: "2 KiB"} {
		if got := Size(n); got != want {
			t.Errorf("Size(%d) = %q, want %q", n, got, want)
		}
	}
}
