package nn

import (
	"fmt"
	"runtime/debug"
)

// PanicError is the error Try and Recover make of a panic: the panic value (wrapped, if it was
// an error) and the stack of the panicking goroutine.
type PanicError struct {
	Value any    // the value passed to panic
	Stack []byte // debug.Stack() at the recover
}

func (e *PanicError) Error() string {
	return fmt.Sprintf("panic: %v\n%s", e.Value, e.Stack)
}

// Unwrap returns the panic value if it is an error (GoMLX panics with errors on shape errors).
func (e *PanicError) Unwrap() error {
	if err, ok := e.Value.(error); ok {
		return err
	}
	return nil
}

// Try runs fn and returns a *PanicError if it panics, nil otherwise. Use it around GoMLX graph
// building (which panics on shape errors) and at the top of every goroutine that touches GoMLX:
//
//	err := nn.Try(func() { loss = buildLoss(ctx, g) })
func Try(fn func()) (err error) {
	defer Recover(&err)
	fn()
	return nil
}

// Recover, deferred directly, turns a panic of the deferring function into a *PanicError stored
// in *err (replacing whatever was there); without a panic it leaves *err alone:
//
//	func build(...) (out *graph.Node, err error) {
//		defer nn.Recover(&err)
//		...
//	}
func Recover(err *error) {
	if r := recover(); r != nil {
		*err = &PanicError{Value: r, Stack: debug.Stack()}
	}
}
