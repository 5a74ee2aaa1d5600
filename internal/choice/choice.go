// Package choice lists the closed sets of values some config fields take (a sampler kind, a
// backend, an engine) in error messages, so that each set is spelled once, beside its type.
package choice

import (
	"fmt"
	"strings"
)

// Want formats opts for a "want" clause: `"a"`, `"a" or "b"`, `"a", "b" or "c"`.
func Want[T ~string](opts []T) string {
	q := make([]string, len(opts))
	for i, o := range opts {
		q[i] = fmt.Sprintf("%q", string(o))
	}
	if len(q) <= 1 {
		return strings.Join(q, "")
	}
	return strings.Join(q[:len(q)-1], ", ") + " or " + q[len(q)-1]
}
