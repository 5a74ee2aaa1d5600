package atomicfile

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// faultyFile is a real temporary file whose step named fail returns errDisk instead of
// running.
type faultyFile struct {
	*os.File
	fail   string
	closed bool
}

var errDisk = errors.New("disk on fire")

func (f *faultyFile) Write(p []byte) (int, error) {
	if f.fail == "write" {
		return 0, errDisk
	}
	return f.File.Write(p)
}

func (f *faultyFile) Chmod(m os.FileMode) error {
	if f.fail == "chmod" {
		return errDisk
	}
	return f.File.Chmod(m)
}

func (f *faultyFile) Sync() error {
	if f.fail == "sync" {
		return errDisk
	}
	return f.File.Sync()
}

func (f *faultyFile) Close() error {
	f.closed = true
	err := f.File.Close()
	if f.fail == "close" {
		return errDisk
	}
	return err
}

// entries lists the names in dir.
func entries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

// checkOnly fails unless dir holds exactly the file name with content want and mode 0644.
func checkOnly(t *testing.T, dir, name string, want []byte) {
	t.Helper()
	if names := entries(t, dir); len(names) != 1 || names[0] != name {
		t.Errorf("directory holds %v, want only %s", names, name)
	}
	path := filepath.Join(dir, name)
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s holds %d bytes %.20q…, want %d bytes %.20q…", name, len(got), got, len(want), want)
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o644 {
		t.Errorf("mode of %s = %v (%v), want 0644", name, st.Mode().Perm(), err)
	}
}

func TestWrite(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f.bin")

	// New file, written in small pieces through the buffer.
	if err := Write(path, func(w io.Writer) error {
		for _, s := range []string{"he", "ll", "o"} {
			if _, err := io.WriteString(w, s); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	checkOnly(t, dir, "f.bin", []byte("hello"))

	// Replacing a 0600 file: the content is replaced and the mode is 0644 (os.CreateTemp makes
	// 0600 files, so this also shows the chmod ran). 200000 bytes is three 64 KiB buffers and
	// a part.
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("0123456789"), 20000)
	if err := WriteBytes(path, big); err != nil {
		t.Fatal(err)
	}
	checkOnly(t, dir, "f.bin", big)

	// Empty content.
	if err := WriteBytes(path, nil); err != nil {
		t.Fatal(err)
	}
	checkOnly(t, dir, "f.bin", nil)

	// A path without a directory is written in the working directory.
	t.Chdir(dir)
	if err := WriteBytes("f.bin", []byte("here")); err != nil {
		t.Fatal(err)
	}
	checkOnly(t, dir, "f.bin", []byte("here"))
}

// Every failure before the rename leaves the old file as it was, no temporary file and no open
// descriptor, and the error names the step, path and cause.
func TestWriteFailureKeepsOldFile(t *testing.T) {
	old := []byte("old content")
	tests := []struct {
		name    string
		fail    string // the faultyFile step that fails; "" for none
		fill    func(w io.Writer) error
		wantErr string
	}{
		{"fill", "", func(io.Writer) error { return errDisk }, "write %s: disk on fire"},
		// The fill writes 10 bytes into the 64 KiB buffer: the file's Write runs at the flush.
		{"write", "write", func(w io.Writer) error { _, err := io.WriteString(w, "new conten"); return err }, "write %s: disk on fire"},
		// 100000 bytes overflow the buffer: the file's Write fails inside fill.
		{"write inside fill", "write", func(w io.Writer) error { _, err := w.Write(make([]byte, 100000)); return err }, "write %s: disk on fire"},
		{"chmod", "chmod", func(w io.Writer) error { _, err := io.WriteString(w, "x"); return err }, "chmod %s: disk on fire"},
		{"sync", "sync", func(w io.Writer) error { _, err := io.WriteString(w, "x"); return err }, "sync %s: disk on fire"},
		{"close", "close", func(w io.Writer) error { _, err := io.WriteString(w, "x"); return err }, "close %s: disk on fire"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "f.bin")
			if err := os.WriteFile(path, old, 0o644); err != nil {
				t.Fatal(err)
			}
			var ff *faultyFile
			w := Writer{CreateTemp: func(d, pattern string) (File, error) {
				f, err := os.CreateTemp(d, pattern)
				if err != nil {
					return nil, err
				}
				ff = &faultyFile{File: f, fail: tc.fail}
				return ff, nil
			}}
			err := w.Write(path, tc.fill)
			if want := strings.ReplaceAll(tc.wantErr, "%s", path); err == nil || err.Error() != want {
				t.Errorf("error %v, want %q", err, want)
			}
			if !errors.Is(err, errDisk) {
				t.Errorf("error %v does not wrap the cause", err)
			}
			if !ff.closed {
				t.Error("temporary file left open")
			}
			checkOnly(t, dir, "f.bin", old)
		})
	}
}

func TestWriteCreateFailure(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f.bin")
	if err := os.WriteFile(path, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	w := Writer{CreateTemp: func(string, string) (File, error) { return nil, errDisk }}
	filled := false
	err := w.Write(path, func(io.Writer) error { filled = true; return nil })
	if want := "create temporary file for " + path + ": disk on fire"; err == nil || err.Error() != want {
		t.Errorf("error %v, want %q", err, want)
	}
	if filled {
		t.Error("fill ran without a file")
	}
	checkOnly(t, dir, "f.bin", []byte("old"))

	// The real os.CreateTemp failing: the directory does not exist.
	missing := filepath.Join(dir, "no", "f.bin")
	if err := WriteBytes(missing, []byte("x")); err == nil || !strings.Contains(err.Error(), "create temporary file for "+missing) ||
		!errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing directory: error %v, want one naming %s and wrapping ErrNotExist", err, missing)
	}
}

// A rename that fails (path is a non-empty directory) removes the temporary file and leaves
// the directory as it was.
func TestWriteRenameFailure(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "d")
	if err := os.MkdirAll(filepath.Join(path, "inner"), 0o755); err != nil {
		t.Fatal(err)
	}
	err := WriteBytes(path, []byte("x"))
	if err == nil || !strings.HasPrefix(err.Error(), "rename temporary file to "+path+": ") {
		t.Errorf("error %v, want a rename error naming %s", err, path)
	}
	if names := entries(t, dir); len(names) != 1 || names[0] != "d" {
		t.Errorf("directory holds %v, want only d", names)
	}
	if st, err := os.Stat(path); err != nil || !st.IsDir() {
		t.Errorf("%s is no longer a directory: %v", path, err)
	}
}

// The directory is fsynced once, after the rename: when SyncDir runs the new file is already
// in place under its name.
func TestWriteSyncsDirectoryAfterRename(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f.bin")
	var synced []string
	w := Writer{SyncDir: func(d string) error {
		synced = append(synced, d)
		if got, err := os.ReadFile(path); err != nil || string(got) != "new" {
			t.Errorf("at the directory sync %s holds %q (%v), want new", path, got, err)
		}
		if names := entries(t, dir); len(names) != 1 {
			t.Errorf("at the directory sync the directory holds %v, want only f.bin", names)
		}
		return nil
	}}
	if err := w.WriteBytes(path, []byte("new")); err != nil {
		t.Fatal(err)
	}
	if len(synced) != 1 || synced[0] != dir {
		t.Errorf("synced directories %v, want [%s]", synced, dir)
	}

	// A failing directory sync is reported; the new file stays (it was renamed already).
	w.SyncDir = func(string) error { return errDisk }
	err := w.WriteBytes(path, []byte("newer"))
	if want := "write " + path + ": disk on fire"; err == nil || err.Error() != want {
		t.Errorf("error %v, want %q", err, want)
	}
	checkOnly(t, dir, "f.bin", []byte("newer"))
}

func TestSyncDir(t *testing.T) {
	dir := t.TempDir()
	if err := SyncDir(dir); err != nil {
		t.Errorf("SyncDir(%s) = %v", dir, err)
	}
	missing := filepath.Join(dir, "missing")
	if err := SyncDir(missing); err == nil || !strings.HasPrefix(err.Error(), "sync directory "+missing+": ") ||
		!errors.Is(err, os.ErrNotExist) {
		t.Errorf("SyncDir(missing) = %v, want an error naming %s and wrapping ErrNotExist", err, missing)
	}
}
