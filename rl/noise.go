package rl

import "math/rand/v2"

// The random streams of sampling, each seeded once and drawn in a fixed order, so a rollout or
// an evaluation is reproducible from (weights, conditioning, seed).
const (
	// rolloutStream is the PCG stream of rollouts: x_0 of every sample (prompt by prompt), then
	// each step's noise.
	rolloutStream = 0x6a09e667f3bcc908
	// odeNoiseStream separates the initial noise of ODE sampling (evaluation, `sample`) from
	// every other stream; image i draws from its own generator (see InitialNoise).
	odeNoiseStream = 0x65766e6f697365 // "evnoise"
)

// rolloutRNG is the generator of one rollout.
func rolloutRNG(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, rolloutStream)) }

// InitialNoise is x_0 of ODE sample i: size standard normal float32 values from a PCG generator
// seeded with (seed, i), so an image's noise does not depend on the batch it is sampled in and
// evaluations before and after training see the same noise.
func InitialNoise(seed int64, i, size int) []float32 {
	rng := rand.New(rand.NewPCG(uint64(seed), odeNoiseStream^uint64(i)))
	return normals(rng, size)
}

// normals draws n standard normal float32 values from rng.
func normals(rng *rand.Rand, n int) []float32 {
	out := make([]float32, n)
	for i := range out {
		out[i] = float32(rng.NormFloat64())
	}
	return out
}

// initialNoise draws x_0 for p prompts × g samples of l values (shared within a group when
// same is set), prompt by prompt.
func initialNoise(rng *rand.Rand, p, g, l int, same bool) []float32 {
	x := make([]float32, p*g*l)
	for pi := range p {
		var shared []float32
		if same {
			shared = normals(rng, l)
		}
		for gi := range g {
			dst := x[(pi*g+gi)*l : (pi*g+gi+1)*l]
			if same {
				copy(dst, shared)
			} else {
				copy(dst, normals(rng, l))
			}
		}
	}
	return x
}
