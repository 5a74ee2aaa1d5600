package tinyocr

import (
	"math"

	"github.com/densegrpo/densegrpo/models/nn"
)

// tryPanic runs fn, turning a panic (GoMLX graph or context building) into an error.
func tryPanic(fn func()) error { return nn.Try(fn) }

func sqrt(x float64) float64 { return math.Sqrt(x) }
