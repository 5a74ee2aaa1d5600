package layout

import (
	"bytes"
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const module = "github.com/densegrpo/densegrpo/"

// pkg is what `go list -json` says of one package.
type pkg struct {
	ImportPath   string
	Imports      []string // non-test code
	Deps         []string // transitive, non-test code
	TestImports  []string
	XTestImports []string
}

func listModule(t *testing.T) []pkg {
	t.Helper()
	cmd := exec.Command("go", "list", "-json", "../../...")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("go list: %v\n%s", err, errb.String())
	}
	var pkgs []pkg
	dec := json.NewDecoder(&out)
	for dec.More() {
		var p pkg
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	if len(pkgs) < 20 {
		t.Fatalf("go list found %d packages, want the whole module", len(pkgs))
	}
	return pkgs
}

func rel(path string) string { return strings.TrimPrefix(path, module) }

func under(path, dir string) bool { r := rel(path); return r == dir || strings.HasPrefix(r, dir+"/") }

// TestDependencyRules: dependencies point one way (cmd → pipeline → {rl, rewards} → models);
// rl never reaches ONNX Runtime and rewards never reaches GoMLX, however indirectly; no package
// under models/ imports exporters/ or datasets/ in its code; pipeline's subpackages do not
// import pipeline itself; only cmd/ has main packages of the product besides small dev tools.
func TestDependencyRules(t *testing.T) {
	for _, p := range listModule(t) {
		name := rel(p.ImportPath)
		for _, d := range p.Deps {
			switch {
			case under(p.ImportPath, "rl") && (strings.Contains(d, "onnxruntime_go") || d == module+"models/onnxrt"):
				t.Errorf("%s depends on ONNX Runtime through %s", name, d)
			case under(p.ImportPath, "rewards") && strings.HasPrefix(d, "github.com/gomlx/"):
				t.Errorf("%s depends on GoMLX through %s", name, d)
			}
		}
		for _, imp := range p.Imports {
			switch {
			case under(p.ImportPath, "models") && (under(imp, "exporters") || under(imp, "datasets")):
				t.Errorf("%s imports %s: models/ must not import exporters/ or datasets/", name, rel(imp))
			case strings.HasPrefix(name, "pipeline/") && imp == module+"pipeline":
				t.Errorf("%s imports its parent pipeline", name)
			case !under(p.ImportPath, "cmd") && (under(imp, "cmd") || under(imp, "pipeline")) && !under(p.ImportPath, "pipeline"):
				t.Errorf("%s imports %s: only cmd and pipeline sit above pipeline", name, rel(imp))
			case (under(p.ImportPath, "rl") || under(p.ImportPath, "rewards")) && (under(imp, "rl") || under(imp, "rewards")) &&
				strings.SplitN(name, "/", 2)[0] != strings.SplitN(rel(imp), "/", 2)[0]:
				t.Errorf("%s imports %s: rl and rewards are siblings", name, rel(imp))
			}
		}
	}
}

// TestNoExitPastDefer: os.Exit skips deferred calls, so no function of the module may both
// defer and call os.Exit (cmd/pipeline's main deferred the signal handler's stop, then exited).
func TestNoExitPastDefer(t *testing.T) {
	var files []string
	err := filepath.WalkDir("../..", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && path != "../.." && strings.HasPrefix(d.Name(), ".") {
			return filepath.SkipDir // .cache, .venv, .git
		}
		if !d.IsDir() && strings.HasSuffix(path, ".go") && !strings.HasSuffix(path, "_test.go") {
			files = append(files, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range files {
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, decl := range f.Decls {
			fn, ok := decl.(*ast.FuncDecl)
			if !ok || fn.Body == nil {
				continue
			}
			defers, exits := false, false
			ast.Inspect(fn.Body, func(n ast.Node) bool {
				switch n := n.(type) {
				case *ast.FuncLit:
					return false // a closure's defers are its own
				case *ast.DeferStmt:
					defers = true
				case *ast.CallExpr:
					if sel, ok := n.Fun.(*ast.SelectorExpr); ok && sel.Sel.Name == "Exit" {
						if id, ok := sel.X.(*ast.Ident); ok && id.Name == "os" {
							exits = true
						}
					}
				}
				return true
			})
			if defers && exits {
				t.Errorf("%s: func %s defers and calls os.Exit, which skips the deferred calls", strings.TrimPrefix(path, "../../"), fn.Name.Name)
			}
		}
	}
	if len(files) < 100 {
		t.Fatalf("checked %d files, want the whole module", len(files))
	}
}

// TestOneONNXRuntimeTestMain: packages whose tests run ONNX Runtime share onnxrttest.Main
// instead of a copy of it (there were six).
func TestOneONNXRuntimeTestMain(t *testing.T) {
	err := filepath.WalkDir("../..", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && path != "../.." && strings.HasPrefix(d.Name(), ".") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, 0)
		if err != nil {
			return err
		}
		for _, decl := range f.Decls {
			if fn, ok := decl.(*ast.FuncDecl); ok && fn.Name.Name == "TestMain" && fn.Body != nil {
				ast.Inspect(fn.Body, func(n ast.Node) bool {
					if sel, ok := n.(*ast.SelectorExpr); ok && sel.Sel.Name == "Init" {
						if id, ok := sel.X.(*ast.Ident); ok && id.Name == "onnxrt" {
							t.Errorf("%s: TestMain initialises ONNX Runtime itself; use onnxrttest.Main", strings.TrimPrefix(path, "../../"))
						}
					}
					return true
				})
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
