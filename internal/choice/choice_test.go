package choice

import "testing"

type kind string

func TestWant(t *testing.T) {
	for _, tc := range []struct {
		opts []kind
		want string
	}{
		{nil, ""},
		{[]kind{"a"}, `"a"`},
		{[]kind{"sde", "cps"}, `"sde" or "cps"`},
		{[]kind{"auto", "go", "xla:cpu"}, `"auto", "go" or "xla:cpu"`},
	} {
		if got := Want(tc.opts); got != tc.want {
			t.Errorf("Want(%q) = %s, want %s", tc.opts, got, tc.want)
		}
	}
}
