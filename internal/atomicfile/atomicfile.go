// Package atomicfile owns the one way the project writes a file: into a temporary file in the
// same directory, which is fsynced, closed and renamed over the target, after which the
// directory is fsynced. A reader — or the project after a crash — sees either the old file or
// the complete new one, never a part.
//
// Written files get mode 0644 (umask is not applied, and the mode of a file being replaced is
// not kept): everything the project writes — weights, ONNX models, PNGs, configs, reports —
// is meant to be read by others.
//
// Tests inject a failing disk through a Writer with its CreateTemp or SyncDir replaced; the
// package-level functions use the zero Writer, which touches the real file system.
package atomicfile

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// Mode is the permission of every file Write creates.
const Mode os.FileMode = 0o644

// File is what Write needs of its temporary file; *os.File implements it.
type File interface {
	io.Writer
	Name() string
	Chmod(mode os.FileMode) error
	Sync() error
	Close() error
}

// Writer writes files atomically. Its zero value uses the real file system; tests replace
// its fields to make a step fail.
type Writer struct {
	// CreateTemp creates the temporary file in dir, its name made from pattern as
	// os.CreateTemp does. Nil means os.CreateTemp.
	CreateTemp func(dir, pattern string) (File, error)
	// SyncDir fsyncs a directory after the temporary file was renamed into it. Nil means
	// the package-level SyncDir.
	SyncDir func(dir string) error
}

// Write creates path atomically: fill writes into a buffered temporary file in the same
// directory, which is flushed, given mode 0644, fsynced, closed and renamed over path; the
// directory is then fsynced. On any error before the rename the temporary file is removed
// and an existing file at path is untouched; an error fsyncing the directory is returned
// with the new file already in place. The directory must exist.
func Write(path string, fill func(w io.Writer) error) error {
	return Writer{}.Write(path, fill)
}

// WriteBytes creates path atomically holding data, as Write does.
func WriteBytes(path string, data []byte) error {
	return Writer{}.WriteBytes(path, data)
}

// SyncDir fsyncs the directory dir, making the creation, removal or renaming of its entries
// durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}

// WriteBytes creates path atomically holding data, as Write does.
func (w Writer) WriteBytes(path string, data []byte) error {
	return w.Write(path, func(out io.Writer) error {
		_, err := out.Write(data)
		return err
	})
}

// Write creates path atomically through fill, as the package-level Write does.
func (w Writer) Write(path string, fill func(w io.Writer) error) (err error) {
	createTemp, syncDir := w.CreateTemp, w.SyncDir
	if createTemp == nil {
		createTemp = func(dir, pattern string) (File, error) {
			f, err := os.CreateTemp(dir, pattern)
			if err != nil {
				return nil, err // not f: a nil *os.File in a File would not compare equal to nil
			}
			return f, nil
		}
	}
	if syncDir == nil {
		syncDir = SyncDir
	}
	dir := filepath.Dir(path)
	f, err := createTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("create temporary file for %s: %w", path, err)
	}
	tmp, open, renamed := f.Name(), true, false
	defer func() {
		if err == nil || renamed {
			return
		}
		if open {
			f.Close()
		}
		os.Remove(tmp)
	}()
	bw := bufio.NewWriterSize(f, 1<<16)
	if err := fill(bw); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Chmod(Mode); err != nil {
		return fmt.Errorf("chmod %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", path, err)
	}
	open = false
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("rename temporary file to %s: %w", path, err)
	}
	renamed = true // the file is in place under its name: from here on nothing is removed
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
