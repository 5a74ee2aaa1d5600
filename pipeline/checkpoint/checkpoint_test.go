package checkpoint

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"github.com/densegrpo/densegrpo/models/safetensors"
)

func testCheckpoint(epoch int) Checkpoint {
	return Checkpoint{
		Epoch: epoch,
		State: json.RawMessage(`{"rng":"AAEC","cursor":7}`),
		Tensors: map[string]map[string]safetensors.Tensor{
			"lora":      {"a.lora_A.weight": {Shape: []int{2, 3}, Data: []float32{1, 2, 3, 4, 5, float32(epoch)}}},
			"optimizer": {"a.lora_A.weight/m": {Shape: []int{2, 3}, Data: []float32{0.5, 0, 0, 0, 0, -1}}},
		},
	}
}

func TestCheckpointRoundTripAndPrune(t *testing.T) {
	c := New(filepath.Join(t.TempDir(), "checkpoints"), 2)
	for epoch := 1; epoch <= 3; epoch++ {
		if _, err := c.Save(testCheckpoint(epoch)); err != nil {
			t.Fatal(err)
		}
	}
	dir, ok, err := c.Latest()
	if err != nil || !ok {
		t.Fatalf("Latest: ok=%v err=%v", ok, err)
	}
	if filepath.Base(dir) != "epoch-000003" {
		t.Errorf("latest dir %s, want epoch-000003", dir)
	}
	got, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer got.Close()
	want := testCheckpoint(3)
	var gotState, wantState any
	json.Unmarshal(got.State, &gotState)
	json.Unmarshal(want.State, &wantState)
	tensors := map[string]map[string]safetensors.Tensor{}
	for g, group := range want.Tensors {
		if tensors[g], err = got.Read(g, wantsOf(group)); err != nil {
			t.Fatal(err)
		}
	}
	if got.Epoch != 3 || !reflect.DeepEqual(gotState, wantState) || !reflect.DeepEqual(tensors, want.Tensors) {
		t.Errorf("round trip: got epoch %d, state %s, tensors %v; want %+v", got.Epoch, got.State, tensors, want)
	}
	epochs, _ := c.list()
	if !reflect.DeepEqual(epochs, []int{2, 3}) {
		t.Errorf("kept %v, want [2 3]", epochs)
	}
}

// A write that fails half-way must leave the previous checkpoint as the latest and no
// directory under a final name.
func TestCheckpointFailedWriteKeepsPrevious(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "checkpoints")
	c := New(dir, 3)
	if _, err := c.Save(testCheckpoint(1)); err != nil {
		t.Fatal(err)
	}
	diskFull := errors.New("no space left on device")
	calls := 0
	c.writeTensors = func(path string, ts map[string]safetensors.Tensor, md map[string]string) error {
		calls++
		if calls == 2 { // the second group: the first file is already on disk
			return diskFull
		}
		return safetensors.Write(path, ts, md)
	}
	_, err := c.Save(testCheckpoint(2))
	if !errors.Is(err, diskFull) || !strings.Contains(err.Error(), "epoch-000002") {
		t.Fatalf("error %v, want the disk error naming epoch-000002", err)
	}
	latest, ok, err := c.Latest()
	if err != nil || !ok || filepath.Base(latest) != "epoch-000001" {
		t.Fatalf("latest after failed save: %s ok=%v err=%v, want epoch-000001", latest, ok, err)
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.Name() != "epoch-000001" {
			t.Errorf("left behind %s", e.Name())
		}
	}
}

// A crash between writing and renaming leaves a .tmp directory, which is not a checkpoint.
func TestCheckpointIgnoresUnfinished(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "checkpoints")
	c := New(dir, 3)
	if _, err := c.Save(testCheckpoint(4)); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "epoch-000005.tmp"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "epoch-000005.tmp", stateFile), []byte(`{"epoch":5}`), 0o644)
	latest, ok, err := c.Latest()
	if err != nil || !ok || filepath.Base(latest) != "epoch-000004" {
		t.Fatalf("latest: %s ok=%v err=%v, want epoch-000004", latest, ok, err)
	}
}

// wantsOf lists a group's tensors as F32 wants.
func wantsOf(group map[string]safetensors.Tensor) []safetensors.Want {
	var out []safetensors.Want
	for name, t := range group {
		out = append(out, safetensors.Want{Name: name, Shape: t.Shape, DType: "F32"})
	}
	return out
}

// A group that carries one unrelated 1 GiB tensor (sparse: a few KB on disk) besides what the
// caller wants is refused from its header: Load and Read allocate nothing near its size.
func TestCheckpointUnrelatedTensorIsNotRead(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "checkpoints")
	ck, err := New(dir, 1).Save(testCheckpoint(1))
	if err != nil {
		t.Fatal(err)
	}
	const big = 1 << 30
	header := fmt.Sprintf(`{"a.lora_A.weight":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},`+
		`"unrelated":{"dtype":"F32","shape":[%d],"data_offsets":[24,%d]}}`, big/4, 24+big)
	path := filepath.Join(ck, "lora.safetensors")
	var b bytes.Buffer
	binary.Write(&b, binary.LittleEndian, uint64(len(header)))
	b.WriteString(header)
	b.Write(make([]byte, 24))
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, int64(b.Len())+big); err != nil {
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	s, err := Load(ck)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	want := wantsOf(testCheckpoint(1).Tensors["lora"])
	_, err = s.Read("lora", want)
	runtime.ReadMemStats(&after)
	if err == nil || !strings.Contains(err.Error(), `lora.safetensors: 1 tensors not declared by the model config, e.g. ["unrelated"]`) {
		t.Errorf("Read error %v, want the unrelated tensor named", err)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 64<<20 {
		t.Errorf("Load and Read allocated %d MB, want the headers only (the unrelated tensor is 1024 MB)", alloc>>20)
	}
}

func TestCheckpointReadChecksTheHeader(t *testing.T) {
	ck, err := New(t.TempDir(), 1).Save(testCheckpoint(1))
	if err != nil {
		t.Fatal(err)
	}
	s, err := Load(ck)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, c := range []struct {
		group string
		want  []safetensors.Want
		err   string
	}{
		{"ema", nil, "has no ema.safetensors"},
		{"lora", []safetensors.Want{{Name: "a.lora_A.weight", Shape: []int{3, 2}}}, `lora.safetensors: tensor "a.lora_A.weight": file has shape [2 3], model wants [3 2]`},
		{"lora", []safetensors.Want{{Name: "a.lora_A.weight", Shape: []int{2, 3}, DType: "BF16"}}, `tensor "a.lora_A.weight": file has dtype F32, want BF16`},
		{"lora", []safetensors.Want{{Name: "a.lora_A.weight", Shape: []int{2, 3}}, {Name: "b", Shape: []int{1}}}, `missing tensor "b" (want [1])`},
	} {
		if _, err := s.Read(c.group, c.want); err == nil || !strings.Contains(err.Error(), c.err) {
			t.Errorf("Read(%s, %v): error %v, want %q", c.group, c.want, err, c.err)
		}
	}
	if !s.Has("optimizer") || s.Has("ema") || !reflect.DeepEqual(s.Names("optimizer"), []string{"a.lora_A.weight/m"}) {
		t.Errorf("Has/Names: optimizer %v %v, ema %v", s.Has("optimizer"), s.Names("optimizer"), s.Has("ema"))
	}
}

// state.json is read whole, so its size is bounded.
func TestCheckpointStateTooLarge(t *testing.T) {
	ck, err := New(t.TempDir(), 1).Save(testCheckpoint(1))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(filepath.Join(ck, stateFile), maxStateBytes+1); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(ck); err == nil || !strings.Contains(err.Error(), "state.json: more than 16777216 bytes") {
		t.Errorf("Load error %v, want the state size refused", err)
	}
}
