// Package checkpoint writes and reads the atomic checkpoint directories of training runs
// (`pipeline run` and `pipeline pretrain`): named groups of tensors, one safetensors file each,
// and a JSON state, under epoch-N/, written through epoch-N.tmp/ and a rename.
package checkpoint

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/densegrpo/densegrpo/internal/atomicfile"
	"github.com/densegrpo/densegrpo/models/safetensors"
)

// Checkpoint is everything a resumed run needs to continue exactly where it stopped, as Save
// writes it (Load returns a Stored, whose tensors are read on demand).
type Checkpoint struct {
	// Epoch is the number of completed epochs.
	Epoch int
	// State is the trainer's JSON state: RNG state, prompt cursor, optimizer step, ψ, ...
	State json.RawMessage
	// Tensors are named groups ("lora", "ema", "optimizer") of named tensors, one
	// safetensors file each.
	Tensors map[string]map[string]safetensors.Tensor
	// Metadata is the safetensors metadata of some groups' files (for files other tools
	// read, such as diffusers' LoRA format); nil for the rest.
	Metadata map[string]map[string]string
}

// Checkpointer writes checkpoints atomically into Dir: everything goes to `epoch-N.tmp/`,
// is fsynced, and the directory is renamed to `epoch-N/` (then the parent is fsynced), so a
// crash at any point leaves either the previous checkpoints or the new one complete, never a
// half-written one under a final name. Only the newest Keep checkpoints are kept.
type Checkpointer struct {
	Dir  string
	Keep int
	// writeTensors is the seam through which tests inject a failing disk.
	writeTensors func(path string, tensors map[string]safetensors.Tensor, metadata map[string]string) error
}

// New returns a checkpointer for dir keeping the newest keep checkpoints.
func New(dir string, keep int) *Checkpointer {
	return &Checkpointer{Dir: dir, Keep: keep, writeTensors: safetensors.Write}
}

const stateFile = "state.json"

func checkpointName(epoch int) string { return fmt.Sprintf("epoch-%06d", epoch) }

// Save writes ck and returns its directory.
func (c *Checkpointer) Save(ck Checkpoint) (string, error) {
	final := filepath.Join(c.Dir, checkpointName(ck.Epoch))
	tmp := final + ".tmp"
	fail := func(err error) (string, error) {
		os.RemoveAll(tmp)
		return "", fmt.Errorf("save checkpoint %s: %w", final, err)
	}
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return fail(err)
	}
	if err := os.RemoveAll(tmp); err != nil {
		return fail(err)
	}
	if err := os.Mkdir(tmp, 0o755); err != nil {
		return fail(err)
	}
	groups := make([]string, 0, len(ck.Tensors))
	for g := range ck.Tensors {
		groups = append(groups, g)
	}
	sort.Strings(groups)
	for _, g := range groups {
		if err := c.writeTensors(filepath.Join(tmp, g+".safetensors"), ck.Tensors[g], ck.Metadata[g]); err != nil {
			return fail(fmt.Errorf("write %s tensors: %w", g, err))
		}
	}
	state := ck.State
	if state == nil {
		state = json.RawMessage("{}")
	}
	doc, err := json.MarshalIndent(struct {
		Epoch int             `json:"epoch"`
		State json.RawMessage `json:"state"`
	}{ck.Epoch, state}, "", "  ")
	if err != nil {
		return fail(err)
	}
	if err := atomicfile.WriteBytes(filepath.Join(tmp, stateFile), doc); err != nil {
		return fail(err)
	}
	if err := atomicfile.SyncDir(tmp); err != nil {
		return fail(err)
	}
	if err := os.RemoveAll(final); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, final); err != nil {
		return fail(err)
	}
	if err := atomicfile.SyncDir(c.Dir); err != nil {
		return fail(err)
	}
	if err := c.prune(); err != nil {
		return final, err
	}
	return final, nil
}

// list returns the completed checkpoint epochs, ascending. Unfinished `.tmp` directories are
// not checkpoints.
func (c *Checkpointer) list() ([]int, error) {
	entries, err := os.ReadDir(c.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list checkpoints in %s: %w", c.Dir, err)
	}
	var epochs []int
	for _, e := range entries {
		name := e.Name()
		if !e.IsDir() || !strings.HasPrefix(name, "epoch-") || strings.HasSuffix(name, ".tmp") {
			continue
		}
		n, err := strconv.Atoi(strings.TrimPrefix(name, "epoch-"))
		if err != nil {
			continue
		}
		if _, err := os.Stat(filepath.Join(c.Dir, name, stateFile)); err != nil {
			continue
		}
		epochs = append(epochs, n)
	}
	sort.Ints(epochs)
	return epochs, nil
}

func (c *Checkpointer) prune() error {
	epochs, err := c.list()
	if err != nil {
		return err
	}
	for len(epochs) > c.Keep {
		if err := os.RemoveAll(filepath.Join(c.Dir, checkpointName(epochs[0]))); err != nil {
			return fmt.Errorf("remove old checkpoint: %w", err)
		}
		epochs = epochs[1:]
	}
	return nil
}

// Latest returns the directory of the newest complete checkpoint, or ok=false when there is
// none; Load opens it.
func (c *Checkpointer) Latest() (dir string, ok bool, err error) {
	epochs, err := c.list()
	if err != nil || len(epochs) == 0 {
		return "", false, err
	}
	return filepath.Join(c.Dir, checkpointName(epochs[len(epochs)-1])), true, nil
}

// maxStateBytes bounds state.json, which Load reads whole: the trainers' states (RNG and
// counters) are a few KB.
const maxStateBytes = 16 << 20

// Stored is a checkpoint directory opened by Load: its epoch and JSON state, and one open
// safetensors file per tensor group whose header was validated. No tensor is read until the
// caller says what it expects of a group (Read), so a checkpoint that does not fit the model
// — an unrelated tensor, a wrong shape or dtype — costs only its headers.
type Stored struct {
	Dir   string
	Epoch int
	State json.RawMessage
	files map[string]*safetensors.File
}

// Load opens a checkpoint directory written by Save: state.json (at most 16 MiB) is read and
// every *.safetensors header validated; Close releases the files.
func Load(dir string) (*Stored, error) {
	raw, err := readState(filepath.Join(dir, stateFile))
	if err != nil {
		return nil, fmt.Errorf("load checkpoint %s: %w", dir, err)
	}
	var doc struct {
		Epoch int             `json:"epoch"`
		State json.RawMessage `json:"state"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		return nil, fmt.Errorf("load checkpoint %s: %s: %w", dir, stateFile, err)
	}
	paths, err := filepath.Glob(filepath.Join(dir, "*.safetensors"))
	if err != nil {
		return nil, fmt.Errorf("load checkpoint %s: %w", dir, err)
	}
	s := &Stored{Dir: dir, Epoch: doc.Epoch, State: doc.State, files: map[string]*safetensors.File{}}
	for _, p := range paths {
		f, err := safetensors.Open(p)
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("load checkpoint %s: %w", dir, err)
		}
		s.files[strings.TrimSuffix(filepath.Base(p), ".safetensors")] = f
	}
	return s, nil
}

// readState reads path whole if it has at most maxStateBytes.
func readState(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	raw, err := io.ReadAll(io.LimitReader(f, maxStateBytes+1))
	if err != nil {
		return nil, err
	}
	if len(raw) > maxStateBytes {
		return nil, fmt.Errorf("%s: more than %d bytes, want a trainer state of a few KB", filepath.Base(path), maxStateBytes)
	}
	return raw, nil
}

// Close closes the group files.
func (s *Stored) Close() error {
	var errs []error
	for _, f := range s.files {
		errs = append(errs, f.Close())
	}
	return errors.Join(errs...)
}

// Has reports whether the checkpoint holds the group.
func (s *Stored) Has(group string) bool { return s.files[group] != nil }

// Names returns the tensor names of a group's header (none for a missing group): for
// callers that decide tensor by tensor what they expect (optimizer state).
func (s *Stored) Names(group string) []string {
	if f := s.files[group]; f != nil {
		return f.Names()
	}
	return nil
}

// Check verifies from the header that the group holds exactly the wanted tensors, with their
// shapes and dtypes (safetensors.File.Check); nothing is read.
func (s *Stored) Check(group string, want []safetensors.Want) error {
	f := s.files[group]
	if f == nil {
		return fmt.Errorf("checkpoint %s has no %s.safetensors", s.Dir, group)
	}
	if err := f.Check(want); err != nil {
		return fmt.Errorf("checkpoint %s: %s.safetensors: %w", s.Dir, group, err)
	}
	return nil
}

// Read checks a group as Check does and then reads only the wanted tensors.
func (s *Stored) Read(group string, want []safetensors.Want) (map[string]safetensors.Tensor, error) {
	if err := s.Check(group, want); err != nil {
		return nil, err
	}
	out, err := s.files[group].ReadWanted(want)
	if err != nil {
		return nil, fmt.Errorf("checkpoint %s: %w", s.Dir, err)
	}
	return out, nil
}
