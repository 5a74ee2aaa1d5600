package pipeline

// TestConfigDocCoversEveryKey keeps configs/README.md, the configuration reference, in step
// with the config structs. The convention it checks:
//
//   - A Markdown heading (outside code fences) that contains a code span starting with "["
//     opens the section of that TOML table: "### `[grpo]`", "### `[model.lora]`",
//     "### `[[reward]]`", "### `[reward.image]`". A heading naming several tables
//     ("### `[vae.onnx]`, `[reward.onnx]`") opens one section for all of them, whose rows
//     document each (tables with the same keys). Any other heading closes it. A heading that
//     also contains the word "pretrain" documents pipeline/pretrain's schema, which this
//     package cannot import (pretrain imports pipeline), so its section is not checked here.
//   - A key is documented by a table row in its table's section whose first cell is the key's
//     leaf name as a code span: "| `clip_range` | float | `1e-4` | > 0 | … |" under
//     "### `[grpo]`" documents grpo.clip_range. Mentions in prose or examples do not count,
//     so deleting a row fails the test however often the key is named elsewhere.
//   - Dotted keys come from the `toml` tags by reflection, as BurntSushi/toml decodes them:
//     untagged embedded structs (Sections, preprocess.Spec, ocr.DBOptions, geneval.Options)
//     are flattened into their parent, a tagged struct field is a sub-table, tag "-" and
//     unexported fields are skipped. The `reward` toml.Primitive is the `[[reward]]` array,
//     whose keys are rewards.Config's under "reward" (reward.image.mean, reward.ocr.threshold).
//
// It also fails on a row naming no key of its table (stale or misspelt docs), on a section for
// a table the config does not have, and on a ```toml example that does not decode strictly
// (unknown keys) and validate (its [[reward]] blocks).

import (
	"encoding"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"

	"github.com/densegrpo/densegrpo/rewards"
)

const configDocPath = "../configs/README.md"

var (
	primitiveType       = reflect.TypeOf(toml.Primitive{})
	textUnmarshalerType = reflect.TypeOf((*encoding.TextUnmarshaler)(nil)).Elem()
	// docTableHeading finds the table a heading names: `[grpo]`, `[[reward]]`.
	docTableHeading = regexp.MustCompile("`\\[\\[?([A-Za-z0-9_.]+)\\]\\]?`")
	// docKeyCell is a first table cell holding one key name.
	docKeyCell = regexp.MustCompile("^`([A-Za-z0-9_]+)`$")
)

// configKeys walks t's toml tags and returns every leaf key as a dotted path under prefix.
func configKeys(t *testing.T, typ reflect.Type, prefix string) []string {
	t.Helper()
	var keys []string
	for i := 0; i < typ.NumField(); i++ {
		f := typ.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if name == "-" {
			continue
		}
		ft := f.Type
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		if f.Anonymous && name == "" && ft.Kind() == reflect.Struct {
			keys = append(keys, configKeys(t, ft, prefix)...)
			continue
		}
		if name == "" {
			t.Errorf("field %s.%s has no toml tag; give it one (and a row in %s)", typ, f.Name, configDocPath)
			continue
		}
		key := name
		if prefix != "" {
			key = prefix + "." + name
		}
		switch {
		case ft == primitiveType && key == "reward":
			keys = append(keys, configKeys(t, reflect.TypeOf(rewards.Config{}), key)...)
		case isTable(ft):
			keys = append(keys, configKeys(t, ft, key)...)
		case ft.Kind() == reflect.Slice && isTable(ft.Elem()):
			keys = append(keys, configKeys(t, ft.Elem(), key)...)
		default:
			keys = append(keys, key)
		}
	}
	return keys
}

// isTable reports whether a field of type typ decodes from a TOML table.
func isTable(typ reflect.Type) bool {
	return typ.Kind() == reflect.Struct && typ != primitiveType &&
		!reflect.PointerTo(typ).Implements(textUnmarshalerType)
}

// splitKey splits "reward.image.mean" into its table "reward.image" and leaf "mean".
func splitKey(key string) (table, leaf string) {
	i := strings.LastIndex(key, ".")
	if i < 0 {
		return "", key
	}
	return key[:i], key[i+1:]
}

// configDoc is what the README documents.
type configDoc struct {
	// rows maps a table to its documented leaf keys and the line of each row.
	rows map[string]map[string]int
	// tables maps each checked table heading to its line.
	tables map[string]int
	// tomlBlocks are the ```toml examples, with the line each starts on.
	tomlBlocks []docBlock
	// problems are malformed parts of the file itself.
	problems []string
}

type docBlock struct {
	line int
	text string
}

func parseConfigDoc(data []byte) configDoc {
	doc := configDoc{rows: map[string]map[string]int{}, tables: map[string]int{}}
	var tables []string // the checked tables whose section we are in, none outside one
	var fence *docBlock
	inFence := false
	for i, line := range strings.Split(string(data), "\n") {
		n := i + 1
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "```") {
			if !inFence {
				inFence = true
				if strings.TrimSpace(strings.TrimPrefix(trimmed, "```")) == "toml" {
					fence = &docBlock{line: n + 1}
				}
			} else {
				inFence = false
				if fence != nil {
					doc.tomlBlocks = append(doc.tomlBlocks, *fence)
					fence = nil
				}
			}
			continue
		}
		if inFence {
			if fence != nil {
				fence.text += line + "\n"
			}
			continue
		}
		if strings.HasPrefix(line, "#") {
			tables = nil
			if strings.Contains(strings.ToLower(line), "pretrain") {
				continue
			}
			for _, m := range docTableHeading.FindAllStringSubmatch(line, -1) {
				table := m[1]
				if prev, dup := doc.tables[table]; dup {
					doc.problems = append(doc.problems, fmt.Sprintf("%s:%d: second section for [%s] (first on line %d)", configDocPath, n, table, prev))
				}
				doc.tables[table] = n
				tables = append(tables, table)
			}
			continue
		}
		if len(tables) == 0 || !strings.HasPrefix(trimmed, "|") {
			continue
		}
		cells := strings.Split(trimmed, "|")
		if len(cells) < 3 {
			continue
		}
		if m := docKeyCell.FindStringSubmatch(strings.TrimSpace(cells[1])); m != nil {
			for _, table := range tables {
				if doc.rows[table] == nil {
					doc.rows[table] = map[string]int{}
				}
				doc.rows[table][m[1]] = n
			}
		}
	}
	if inFence {
		doc.problems = append(doc.problems, configDocPath+": unterminated code fence")
	}
	return doc
}

// checkConfigDoc returns every disagreement between the reference text and keys, the dotted
// keys of the config.
func checkConfigDoc(data []byte, keys []string) []string {
	doc := parseConfigDoc(data)
	problems := doc.problems
	tables := map[string]map[string]bool{}
	for _, k := range keys {
		table, leaf := splitKey(k)
		if tables[table] == nil {
			tables[table] = map[string]bool{}
		}
		tables[table][leaf] = true
		if _, ok := doc.rows[table][leaf]; !ok {
			where := "a new section headed `[" + table + "]`"
			if line, ok := doc.tables[table]; ok {
				where = fmt.Sprintf("its section (line %d)", line)
			}
			problems = append(problems, fmt.Sprintf("%s is not documented: add a row \"| `%s` | type | default | allowed | meaning |\" to %s of %s",
				k, leaf, where, configDocPath))
		}
	}
	for table, line := range doc.tables {
		if tables[table] == nil {
			problems = append(problems, fmt.Sprintf("%s:%d: section for [%s], a table the config does not have", configDocPath, line, table))
		}
	}
	for table, rows := range doc.rows {
		for leaf, line := range rows {
			if tables[table] != nil && !tables[table][leaf] {
				problems = append(problems, fmt.Sprintf("%s:%d: row for %s.%s, a key the config does not have", configDocPath, line, table, leaf))
			}
		}
	}
	if len(doc.tomlBlocks) == 0 {
		problems = append(problems, configDocPath+" has no ```toml examples")
	}
	for _, b := range doc.tomlBlocks {
		if err := decodeDocExample(b.text); err != nil {
			problems = append(problems, fmt.Sprintf("%s:%d: toml example: %v", configDocPath, b.line, err))
		}
	}
	sort.Strings(problems)
	return problems
}

// decodeDocExample decodes a README example strictly: every key must exist in the training
// config and every [[reward]] block must validate. It opens no file.
func decodeDocExample(text string) error {
	var doc struct {
		Sections
		Reward toml.Primitive `toml:"reward"`
	}
	md, err := toml.Decode(text, &doc)
	if err != nil {
		return err
	}
	if md.IsDefined("reward") {
		if _, err := rewards.DecodePrimitive(md, doc.Reward); err != nil {
			return err
		}
	}
	return checkUndecoded("example", md)
}

// allConfigKeys are the dotted keys of the training config, [[reward]] blocks included.
func allConfigKeys(t *testing.T) []string {
	t.Helper()
	keys := configKeys(t, reflect.TypeOf(Config{}), "")
	sort.Strings(keys)
	return keys
}

func readConfigDoc(t *testing.T) []byte {
	t.Helper()
	data, err := os.ReadFile(configDocPath)
	if err != nil {
		t.Fatalf("read the configuration reference: %v", err)
	}
	return data
}

func TestConfigDocCoversEveryKey(t *testing.T) {
	keys := allConfigKeys(t)
	// Guard the walk itself: keys of every depth and origin must be found, or a broken walker
	// would pass vacuously.
	known := map[string]bool{}
	for _, k := range keys {
		known[k] = true
	}
	for _, k := range []string{"run.name", "model.lora.rank", "onnx.intra_op_threads", "grpo.clip_range",
		"pipeline.score_workers", "reward.name", "reward.image.input", "reward.image.mean",
		"reward.text.pad_id", "reward.output.scale", "reward.ocr.threshold", "reward.ocr.max_width",
		"reward.geneval.position_threshold"} {
		if !known[k] {
			t.Errorf("the reflection walk did not find %s; it is broken", k)
		}
	}
	for _, k := range []string{"path", "rewards", "reward", "rawrewards", "reward.image.spec", "reward.ocr.dboptions", "run"} {
		if known[k] {
			t.Errorf("the reflection walk returned %q, which is not a TOML key (tag \"-\", unexported, embedded or a table)", k)
		}
	}
	for _, p := range checkConfigDoc(readConfigDoc(t), keys) {
		t.Error(p)
	}
}

// TestConfigDocDetectsMissingKey proves the check can fail: the reference with a row removed,
// misspelt, or an example using an unknown key is reported, naming the key.
func TestConfigDocDetectsMissingKey(t *testing.T) {
	data := string(readConfigDoc(t))
	keys := allConfigKeys(t)
	removeRow := func(table, key string) string {
		doc := parseConfigDoc([]byte(data))
		line, ok := doc.rows[table][key]
		if !ok {
			t.Fatalf("the reference has no row for %s.%s to remove", table, key)
		}
		lines := strings.Split(data, "\n")
		return strings.Join(append(lines[:line-1:line-1], lines[line:]...), "\n")
	}
	for _, tc := range []struct {
		name, text, want string
	}{
		{"grpo row removed", removeRow("grpo", "clip_range"), "grpo.clip_range is not documented"},
		{"nested table row removed", removeRow("model.lora", "rank"), "model.lora.rank is not documented"},
		{"onnx row removed", removeRow("onnx", "intra_op_threads"), "onnx.intra_op_threads is not documented"},
		{"embedded Spec row removed", removeRow("reward.image", "mean"), "reward.image.mean is not documented"},
		{"embedded DBOptions row removed", removeRow("reward.ocr", "unclip_ratio"), "reward.ocr.unclip_ratio is not documented"},
		{"reward row removed", removeRow("reward", "weight"), "reward.weight is not documented"},
		{"row misspelt", strings.Replace(data, "| `clip_range` |", "| `clip_rnage` |", 1), "row for grpo.clip_rnage, a key the config does not have"},
		{"section misspelt", strings.Replace(data, "### `[dense]`", "### `[dens]`", 1), "section for [dens], a table the config does not have"},
		{"example with an unknown key", strings.Replace(data, "box_threshold = 0.6", "box_treshold = 0.6", 1), "unknown key reward.ocr.box_treshold"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.text == data {
				t.Fatalf("the edit changed nothing")
			}
			problems := checkConfigDoc([]byte(tc.text), keys)
			for _, p := range problems {
				if strings.Contains(p, tc.want) {
					return
				}
			}
			t.Errorf("want a problem containing %q, got %q", tc.want, problems)
		})
	}
	// A key whose field is new: the walk reports it until the reference has its row.
	withNew := append(append([]string(nil), keys...), "grpo.new_knob")
	problems := checkConfigDoc([]byte(data), withNew)
	if len(problems) != 1 || !strings.Contains(problems[0], "grpo.new_knob is not documented") {
		t.Errorf("a new key: got %q, want one problem naming grpo.new_knob", problems)
	}
}
