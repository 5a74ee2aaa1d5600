package pretrain

import (
	"encoding/json"
	"fmt"

	"github.com/densegrpo/densegrpo/models/nn"
)

// stateGroup is the checkpoint tensor group (one safetensors file) holding every float32
// variable of the training context.
const stateGroup = "variables"

// emaGroup is the checkpoint tensor group of the weights' moving average (train.ema_decay).
const emaGroup = "ema"

// trainState is the JSON part of a checkpoint.
type trainState struct {
	// Step is the number of completed optimiser steps; batch Step is the next one drawn
	// (the data generator is PCG(seed, step), so this is also the RNG state and data cursor).
	Step int `json:"step"`
	// Seed and BatchSize must match the config of a resumed run.
	Seed      uint64 `json:"seed"`
	BatchSize int    `json:"batch_size"`
	// ElapsedSeconds is the training wall time spent so far, over all invocations.
	ElapsedSeconds float64 `json:"elapsed_seconds"`
	// Integers holds the variables that are not float32 (Adam's and the global step counters,
	// GoMLX's RNG state), keyed like the tensors.
	Integers map[string]nn.IntVariable `json:"integers"`
}

// encodeState marshals the JSON part of a checkpoint.
func encodeState(s trainState) (json.RawMessage, error) {
	data, err := json.Marshal(s)
	if err != nil {
		return nil, fmt.Errorf("encode train state: %w", err)
	}
	return data, nil
}
