// Package checkpoint writes and reads the atomic checkpoint directories of training runs
// (`pipeline run` and `pipeline pretrain`): named groups of tensors, one safetensors file each,
// and a JSON state, under epoch-N/, written through epoch-N.tmp/ and a rename.
package checkpoint

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/densegrpo/densegrpo/internal/atomicfile"
	"github.com/densegrpo/densegrpo/models/safetensors"
)

// Checkpoint is everything a resumed run needs to continue exactly where it stopped.
type Checkpoint struct {
	// Epoch is the number of completed epochs.
	Epoch int
	// State is the trainer's JSON state: RNG state, prompt cursor, optimizer step, ψ, ...
	State json.RawMessage
	// Tensors are named groups ("lora", "ema", "optimizer") of named tensors, one
	// safetensors file each.
	Tensors map[string]map[string]safetensors.Tensor
	// Metadata is the safetensors metadata of some groups' files (for files other tools
	// read, such as diffusers' LoRA format); nil for the rest. Load does not return it.
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

// Latest returns the newest complete checkpoint, or ok=false when there is none.
func (c *Checkpointer) Latest() (ck Checkpoint, dir string, ok bool, err error) {
	epochs, err := c.list()
	if err != nil || len(epochs) == 0 {
		return Checkpoint{}, "", false, err
	}
	dir = filepath.Join(c.Dir, checkpointName(epochs[len(epochs)-1]))
	ck, err = Load(dir)
	return ck, dir, err == nil, err
}

// Load reads a checkpoint directory written by Save.
func Load(dir string) (Checkpoint, error) {
	data, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		return Checkpoint{}, fmt.Errorf("load checkpoint %s: %w", dir, err)
	}
	var doc struct {
		Epoch int             `json:"epoch"`
		State json.RawMessage `json:"state"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return Checkpoint{}, fmt.Errorf("load checkpoint %s: %s: %w", dir, stateFile, err)
	}
	ck := Checkpoint{Epoch: doc.Epoch, State: doc.State, Tensors: map[string]map[string]safetensors.Tensor{}}
	files, err := filepath.Glob(filepath.Join(dir, "*.safetensors"))
	if err != nil {
		return Checkpoint{}, fmt.Errorf("load checkpoint %s: %w", dir, err)
	}
	for _, f := range files {
		tensors, _, err := safetensors.Read(f)
		if err != nil {
			return Checkpoint{}, fmt.Errorf("load checkpoint %s: %w", dir, err)
		}
		ck.Tensors[strings.TrimSuffix(filepath.Base(f), ".safetensors")] = tensors
	}
	return ck, nil
}
