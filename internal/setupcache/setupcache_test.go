package setupcache

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestFindPrefersDENSEGRPOCache(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("DENSEGRPO_CACHE", dir)
	if d := Dirs(); len(d) == 0 || d[0] != dir {
		t.Fatalf("Dirs() = %v, want %s first", d, dir)
	}
	rel := filepath.Join("pjrt", "cpu", "x.so")
	_, err := Find(rel)
	if err == nil || !strings.Contains(err.Error(), filepath.Join(dir, rel)) || !strings.Contains(err.Error(), "just setup") {
		t.Fatalf("Find of a missing file: error %v, want it to list %s and name `just setup`", err, filepath.Join(dir, rel))
	}
	if err := os.MkdirAll(filepath.Join(dir, "pjrt", "cpu"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, rel), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := Find(rel); err != nil || got != filepath.Join(dir, rel) {
		t.Fatalf("Find = %q, %v; want %s", got, err, filepath.Join(dir, rel))
	}
}
