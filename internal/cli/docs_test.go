package cli

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The documents a user reads tell the truth about the commands: these tests
// hold docs/operations.md's flag tables, the README's command table and
// every pointer the code gives into the documents to what the code does.

// helpFlag is one flag as `routerd CMD -h` lists it.
type helpFlag struct {
	env, def string // "" when the help names none
	text     string
}

// helpFlags runs `routerd args... -h` and returns its flags by name.
func helpFlags(t *testing.T, args ...string) map[string]helpFlag {
	t.Helper()
	code, out, errs := runCLI(t, append(args, "-h")...)
	if code != 0 || errs != "" {
		t.Fatalf("routerd %v -h: exit %d, stderr %q", args, code, errs)
	}
	flags := map[string]helpFlag{}
	start := regexp.MustCompile(`^  -([a-z0-9-]+)(?: \S+)?$`)
	var name string
	var text []string
	done := func() {
		if name == "" {
			return
		}
		f := helpFlag{text: strings.Join(text, " ")}
		if m := regexp.MustCompile(`\(env ([A-Z0-9_]+)\)`).FindStringSubmatch(f.text); m != nil {
			f.env = m[1]
		}
		if m := regexp.MustCompile(`\(default (.+)\)$`).FindStringSubmatch(f.text); m != nil {
			f.def = strings.Trim(m[1], `"`)
		}
		flags[name] = f
	}
	for _, line := range strings.Split(out, "\n") {
		if m := start.FindStringSubmatch(line); m != nil {
			done()
			name, text = m[1], nil
		} else if name != "" && strings.HasPrefix(line, "    \t") {
			text = append(text, strings.TrimSpace(line))
		}
	}
	done()
	if len(flags) == 0 && strings.Contains(out, "Flags:") {
		t.Fatalf("routerd %v -h: no flag read from:\n%s", args, out)
	}
	return flags
}

// docRow is one row of a markdown table, its cells trimmed.
type docRow []string

// tableAfter returns the rows of the first markdown table that follows the
// line marker in doc, without its header and separator rows.
func tableAfter(t *testing.T, doc, marker string) []docRow {
	t.Helper()
	lines := strings.Split(doc, "\n")
	i := slices.Index(lines, marker)
	if i < 0 {
		t.Fatalf("no line %q", marker)
	}
	for i++; i < len(lines) && !strings.HasPrefix(lines[i], "|"); i++ {
	}
	var rows []docRow
	for ; i < len(lines) && strings.HasPrefix(lines[i], "|"); i++ {
		line := strings.ReplaceAll(strings.Trim(lines[i], "|"), `\|`, "\x00")
		var row docRow
		for _, c := range strings.Split(line, "|") {
			row = append(row, strings.TrimSpace(strings.ReplaceAll(c, "\x00", "|")))
		}
		rows = append(rows, row)
	}
	if len(rows) < 3 {
		t.Fatalf("no table after %q", marker)
	}
	return rows[2:]
}

var (
	docFlagRE       = regexp.MustCompile("`--([a-z0-9-]+)`")
	docEnvRE        = regexp.MustCompile("`([A-Z][A-Z0-9_]*…?)`")
	wordRE          = regexp.MustCompile(`^[a-z]+$`)
	quotedCommandRE = regexp.MustCompile("`routerd [^`]*`")
	proseFlagRE     = regexp.MustCompile(`--([a-z][a-z0-9-]*)`)
	headingRE       = regexp.MustCompile(`(?m)^#+ (.+)$`)
	notAnchorRE     = regexp.MustCompile(`[^a-z0-9 _-]`)
	sectionRE       = regexp.MustCompile(`^([0-9]+(?:\.[0-9]+)*)\.? `)
)

// Every flag of `routerd serve -h` and `routerd agent -h` is a row of
// docs/operations.md's table for the command and every row's flag is one of
// them, with the environment variable and the default the help gives.
func TestOperationsFlagTablesMatchHelp(t *testing.T) {
	data, err := os.ReadFile("../../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []string{"serve", "agent"} {
		help := helpFlags(t, cmd)
		if len(help) < 10 {
			t.Fatalf("routerd %s -h: %d flags read", cmd, len(help))
		}
		documented := map[string]bool{}
		for _, row := range tableAfter(t, string(data), "`routerd "+cmd+"`") {
			if len(row) != 4 {
				t.Errorf("routerd %s: row %q has %d cells, want 4 (flag, env, default, meaning)", cmd, row, len(row))
				continue
			}
			var flags []string
			for _, m := range docFlagRE.FindAllStringSubmatch(row[0], -1) {
				flags = append(flags, m[1])
			}
			envs := docEnvRE.FindAllStringSubmatch(row[1], -1)
			for _, name := range flags {
				documented[name] = true
				h, ok := help[name]
				if !ok {
					t.Errorf("docs/operations.md documents routerd %s --%s, which routerd %s -h does not list", cmd, name, cmd)
					continue
				}
				if h.env != "" && !slices.ContainsFunc(envs, func(e []string) bool { return envMatches(e[1], h.env) }) {
					t.Errorf("routerd %s --%s reads %s; docs/operations.md's env cell is %q", cmd, name, h.env, row[1])
				}
			}
			for _, e := range envs {
				if len(flags) > 0 && !slices.ContainsFunc(flags, func(n string) bool { return envMatches(e[1], help[n].env) }) {
					t.Errorf("docs/operations.md says routerd %s %s reads %s; routerd %s -h names no such variable", cmd, row[0], e[1], cmd)
				}
			}
			if len(flags) == 1 {
				if h, ok := help[flags[0]]; ok && !sameDefault(row[2], h.def) {
					t.Errorf("routerd %s --%s: docs/operations.md's default is %q, routerd %s -h says %q", cmd, flags[0], row[2], cmd, h.def)
				}
			}
		}
		for name := range help {
			if !documented[name] {
				t.Errorf("routerd %s -h lists --%s, which docs/operations.md's table for routerd %s does not document", cmd, name, cmd)
			}
		}
	}
}

// envMatches reports whether the documented variable doc (a name, or a
// prefix ending in …) names env.
func envMatches(doc, env string) bool {
	if p, ok := strings.CutSuffix(doc, "…"); ok {
		return env != "" && strings.HasPrefix(env, p)
	}
	return doc == env
}

// sameDefault reports whether a default cell of the docs says what the
// help's default says: the same duration, number or text; where the help
// shows none, a cell that states no number or duration (—, false, words).
func sameDefault(cell, help string) bool {
	cell = strings.Trim(cell, "`\"")
	if help == "" {
		_, errD := time.ParseDuration(cell)
		_, errN := strconv.ParseFloat(strings.ReplaceAll(cell, ",", ""), 64)
		return errD != nil && errN != nil
	}
	if a, err := time.ParseDuration(cell); err == nil {
		b, err := time.ParseDuration(help)
		return err == nil && a == b
	}
	if a, err := strconv.ParseFloat(strings.ReplaceAll(cell, ",", ""), 64); err == nil {
		b, err := strconv.ParseFloat(help, 64)
		return err == nil && a == b
	}
	return cell == help
}

func TestSameDefault(t *testing.T) {
	for _, tc := range []struct {
		cell, help string
		want       bool
	}{
		{"`1m`", "1m0s", true}, {"`30s`", "30s", true}, {"1048576", "1048576", true}, {"5000", "5000", true},
		{"`routerd`", "routerd", true}, {"`:9464`", ":9464", true}, {"—", "", true}, {"false", "", true},
		{"hostname-pid", "", true}, {"`5s`", "10s", false}, {"20", "", false}, {"`1m`", "", false},
		{"500", "5000", false}, {"`info`", "warn", false},
	} {
		if got := sameDefault(tc.cell, tc.help); got != tc.want {
			t.Errorf("sameDefault(%q, %q) = %v, want %v", tc.cell, tc.help, got, tc.want)
		}
	}
}

// Every flag the README's command table shows is one the command has.
func TestREADMECommandsNameRealFlags(t *testing.T) {
	data, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	rows := tableAfter(t, string(data), "## Commands")
	seen := 0
	for _, row := range rows {
		synopsis := strings.Fields(strings.Trim(strings.SplitN(row[0], "` / `", 2)[0], "`"))
		if len(synopsis) < 2 || synopsis[0] != "routerd" {
			t.Errorf("README command row %q does not start with `routerd COMMAND`", row[0])
			continue
		}
		var cmd []string
		for _, w := range synopsis[1:] {
			if !wordRE.MatchString(w) {
				break
			}
			cmd = append(cmd, w)
		}
		help := helpFlags(t, cmd...)
		// Flags of the command, not those of another command a cell quotes.
		text := quotedCommandRE.ReplaceAllString(strings.Join(row[1:], " "), "")
		for _, m := range proseFlagRE.FindAllStringSubmatch(row[0]+" "+text, -1) {
			seen++
			if _, ok := help[m[1]]; !ok {
				t.Errorf("README's row for routerd %s names --%s, which routerd %s -h does not list", strings.Join(cmd, " "), m[1], strings.Join(cmd, " "))
			}
		}
	}
	if len(rows) < 10 || seen < 40 {
		t.Errorf("%d command rows, %d flags: is the README's table read?", len(rows), seen)
	}
}

// Every flag of every command but serve and agent (whose tables in
// docs/operations.md are held to their help above) is named by the
// README's row for the command, the one reference a user of those commands
// has; a flag every connecting command takes (the URL's TLS files, password
// file, --cluster) may instead be named once in the prose under the table.
// A flag only `-h` shows is one a user never learns of.
func TestREADMECommandsDocumentEveryFlag(t *testing.T) {
	data, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	section := string(data)[strings.Index(string(data), "\n## Commands\n"):]
	section = section[:strings.Index(section[1:], "\n## ")+1]
	var prose []string
	for _, line := range strings.Split(section, "\n") {
		if !strings.HasPrefix(line, "|") {
			prose = append(prose, line)
		}
	}
	proseFlags := map[string]bool{}
	for _, m := range proseFlagRE.FindAllStringSubmatch(strings.Join(prose, "\n"), -1) {
		proseFlags[m[1]] = true
	}
	named := map[string]map[string]bool{} // command words -> flags its rows name
	for _, row := range tableAfter(t, string(data), "## Commands") {
		var cmd []string
		for _, w := range strings.Fields(strings.Trim(strings.SplitN(row[0], "` / `", 2)[0], "`"))[1:] {
			if !wordRE.MatchString(w) {
				break
			}
			cmd = append(cmd, w)
		}
		key := strings.Join(cmd, " ")
		if named[key] == nil {
			named[key] = map[string]bool{}
		}
		text := quotedCommandRE.ReplaceAllString(strings.Join(row[1:], " "), "")
		for _, m := range proseFlagRE.FindAllStringSubmatch(row[0]+" "+text, -1) {
			named[key][m[1]] = true
		}
	}
	// The flags every command that connects to Redis has.
	var shared map[string]bool
	for _, cmd := range [][]string{{"publish"}, {"tail"}, {"invalidate"}, {"compact"}, {"doctor"}, {"deadletter", "replay"}} {
		flags := map[string]bool{}
		for name := range helpFlags(t, cmd...) {
			if shared == nil || shared[name] {
				flags[name] = true
			}
		}
		shared = flags
	}
	if len(shared) < 5 {
		t.Fatalf("only %d flags shared by the commands that connect: %v", len(shared), shared)
	}
	checked, unnamedShared := 0, map[string]bool{}
	for key, flags := range named {
		if key == "serve" || key == "agent" {
			continue
		}
		for name := range helpFlags(t, strings.Fields(key)...) {
			checked++
			switch {
			case flags[name]:
			case shared[name] && name != "redis":
				if !proseFlags[name] && !unnamedShared[name] {
					unnamedShared[name] = true
					t.Errorf("every command that connects takes --%s, which the README's Commands section does not name", name)
				}
			default:
				t.Errorf("routerd %s -h lists --%s, which the README's row for routerd %s does not name", key, name, key)
			}
		}
	}
	if len(named) < 12 || checked < 60 {
		t.Errorf("%d commands, %d flags checked: is the README's table read?", len(named), checked)
	}
}

// docs/architecture.md's package table, where a newcomer learns what each
// directory owns, names every package of the module (a directory holding Go
// files; the graphql module has its own row), and each directory a row
// names exists.
func TestArchitectureNamesEveryPackage(t *testing.T) {
	data, err := os.ReadFile("../../docs/architecture.md")
	if err != nil {
		t.Fatal(err)
	}
	var table []string
	for _, row := range tableAfter(t, string(data), "## Packages") {
		table = append(table, strings.Join(row, " | "))
	}
	text := strings.Join(table, "\n")
	packages := map[string]bool{}
	err = filepath.WalkDir("../..", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel("../..", path)
		if d.IsDir() && (d.Name() == "testdata" || d.Name() == "node_modules" || rel == "graphql" ||
			strings.HasPrefix(d.Name(), ".") && rel != ".") {
			return filepath.SkipDir
		}
		if !d.IsDir() && strings.HasSuffix(path, ".go") && filepath.Dir(rel) != "." {
			packages[filepath.ToSlash(filepath.Dir(rel))] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for p := range packages {
		if !strings.Contains(text, "`"+p+"/") {
			t.Errorf("package %s/ is not in docs/architecture.md's package table", p)
		}
	}
	for _, row := range table {
		first, _, _ := strings.Cut(row, " | ")
		for _, m := range regexp.MustCompile("`([a-z][a-z0-9_/-]*)/`").FindAllStringSubmatch(first, -1) {
			if info, err := os.Stat("../../" + m[1]); err != nil || !info.IsDir() {
				t.Errorf("docs/architecture.md's package table names %s/, which is no directory", m[1])
			}
		}
	}
	if len(packages) < 25 {
		t.Errorf("only %d packages found: is the walk broken?", len(packages))
	}
}

// Every pointer the code gives into the documents — docs/F.md,
// docs/F.md#anchor, docs/F.md §N, README "Section", in messages, help text
// and comments — names a file, anchor, section or heading that exists: an
// error that sends a user to a section that is not there strands them.
func TestDocReferencesExist(t *testing.T) {
	fileRE := regexp.MustCompile(`docs/([A-Za-z_]+\.md)(?:#([a-z0-9_-]+)| ?§ ?([0-9]+(?:\.[0-9]+)*))?`)
	readmeRE := regexp.MustCompile(`README,? \\?"([^"\\]+)\\?"`)
	seen := 0
	err := filepath.WalkDir("../..", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "testdata" || d.Name() == "node_modules" || strings.HasPrefix(d.Name(), ".") && d.Name() != "." && d.Name() != "..") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || filepath.Base(path) == "docs_test.go" {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range fileRE.FindAllStringSubmatch(string(src), -1) {
			seen++
			doc := "../../docs/" + m[1]
			h, ok := readHeadings(doc)
			switch {
			case !ok:
				t.Errorf("%s names docs/%s, which does not exist", path, m[1])
			case m[2] != "" && !h.anchors[m[2]]:
				t.Errorf("%s names docs/%s#%s, which is no heading of it", path, m[1], m[2])
			case m[3] != "" && !h.numbers[m[3]]:
				t.Errorf("%s names docs/%s §%s, which is no section of it", path, m[1], m[3])
			}
		}
		for _, m := range readmeRE.FindAllStringSubmatch(string(src), -1) {
			seen++
			if h, _ := readHeadings("../../README.md"); !h.titles[strings.ToLower(m[1])] {
				t.Errorf("%s names the README's section %q, which the README does not have", path, m[1])
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if seen < 30 {
		t.Errorf("only %d references to the documents found: is the walk broken?", seen)
	}
}

// Every relative link of the README, docs/ and the examples' READMEs —
// [text](path), [text](path#anchor), [text](#anchor) — names a file that
// exists and, in a markdown file, a heading that does: pages are edited
// one section at a time, and a renamed heading strands its links.
func TestDocLinksExist(t *testing.T) {
	linkRE := regexp.MustCompile(`\]\(([^)\s]+)\)`)
	pages, err := filepath.Glob("../../docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	examples, err := filepath.Glob("../../examples/*/README.md")
	if err != nil {
		t.Fatal(err)
	}
	seen, read := 0, map[string]headings{}
	for _, page := range slices.Concat(pages, examples, []string{"../../README.md"}) {
		data, err := os.ReadFile(page)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range linkRE.FindAllStringSubmatch(string(data), -1) {
			target, anchor, _ := strings.Cut(m[1], "#")
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			seen++
			path := page
			if target != "" {
				path = filepath.Join(filepath.Dir(page), target)
			}
			if _, err := os.Stat(path); err != nil {
				t.Errorf("%s links to %s, which does not exist", page, m[1])
				continue
			}
			if anchor == "" || !strings.HasSuffix(path, ".md") {
				continue
			}
			h, ok := read[path]
			if !ok {
				h, _ = readHeadings(path)
				read[path] = h
			}
			if !h.anchors[anchor] {
				t.Errorf("%s links to %s: no heading of %s has the anchor #%s", page, m[1], path, anchor)
			}
		}
	}
	if seen < 100 {
		t.Errorf("only %d relative links found: is the search broken?", seen)
	}
}

type headings struct{ anchors, numbers, titles map[string]bool }

// readHeadings returns a markdown file's headings: their GitHub anchors,
// their section numbers ("3.1" of "### 3.1 Entity references") and their
// titles in lower case; ok is false when the file cannot be read.
func readHeadings(path string) (headings, bool) {
	data, err := os.ReadFile(path)
	if err != nil {
		return headings{}, false
	}
	h := headings{map[string]bool{}, map[string]bool{}, map[string]bool{}}
	for _, m := range headingRE.FindAllStringSubmatch(string(data), -1) {
		title := strings.TrimSpace(m[1])
		a := strings.ToLower(title)
		a = notAnchorRE.ReplaceAllString(a, "")
		h.anchors[strings.ReplaceAll(a, " ", "-")] = true
		if n := sectionRE.FindStringSubmatch(title); n != nil {
			h.numbers[n[1]] = true
		}
		h.titles[strings.ToLower(title)] = true
	}
	return h, true
}

// Every `make TARGET` the README and docs/ tell a user to run is a target
// of the Makefile, and every target of the Makefile (but `all`, plain
// `make`) is named there: a target only the Makefile shows is one nobody
// runs.
func TestDocsNameMakeTargets(t *testing.T) {
	makefile, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	targets := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^([a-z][a-z0-9-]*):`).FindAllStringSubmatch(string(makefile), -1) {
		targets[m[1]] = true
	}
	docs, err := filepath.Glob("../../docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	seen, named := 0, map[string]bool{}
	for _, path := range append(docs, "../../README.md") {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range regexp.MustCompile("(?m)(?:`|^)make ([a-z][a-z0-9-]*)").FindAllStringSubmatch(string(data), -1) {
			seen++
			named[m[1]] = true
			if !targets[m[1]] {
				t.Errorf("%s tells to run make %s, which is no target of the Makefile", path, m[1])
			}
		}
	}
	for target := range targets {
		if target != "all" && !named[target] {
			t.Errorf("the Makefile has a target %s, which neither the README nor docs/ name (`make %s`)", target, target)
		}
	}
	if seen < 20 {
		t.Errorf("only %d make commands found in the docs", seen)
	}
}

// `make fuzz` runs every fuzz target of the module: the Makefile's
// FUZZ_TARGETS lists each `func Fuzz…` of a _test.go file as
// package:target, and only those (the graphql module's are run by name in
// the recipe). A target left out is never fuzzed.
func TestMakeFuzzRunsEveryTarget(t *testing.T) {
	makefile, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?ms)^FUZZ_TARGETS = (.*?)\n\S`).FindSubmatch(makefile)
	if m == nil {
		t.Fatal("no FUZZ_TARGETS in the Makefile")
	}
	listed := map[string]bool{}
	for _, f := range strings.Fields(strings.ReplaceAll(string(m[1]), `\`, " ")) {
		listed[f] = true
	}
	recipe := string(makefile[bytes.Index(makefile, []byte("\nfuzz:")):])
	fuzzRE := regexp.MustCompile(`(?m)^func (Fuzz[A-Za-z0-9_]*)\(`)
	found := 0
	err = filepath.WalkDir("../..", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "testdata" || d.Name() == "node_modules" || strings.HasPrefix(d.Name(), ".") && path != "../..") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, "_test.go") {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel("../..", filepath.Dir(path))
		rel = filepath.ToSlash(rel)
		for _, f := range fuzzRE.FindAllStringSubmatch(string(src), -1) {
			found++
			if strings.HasPrefix(rel, "graphql/") {
				if !strings.Contains(recipe, "'^"+f[1]+"$$'") {
					t.Errorf("%s: %s of the graphql module is not run by make fuzz", path, f[1])
				}
				continue
			}
			target := rel + ":" + f[1]
			if !listed[target] {
				t.Errorf("%s: %s is not in the Makefile's FUZZ_TARGETS: make fuzz never runs it", path, target)
			}
			delete(listed, target)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for target := range listed {
		t.Errorf("the Makefile's FUZZ_TARGETS lists %s, which is no fuzz target", target)
	}
	if found < 20 {
		t.Errorf("only %d fuzz targets found: is the walk broken?", found)
	}
}

// Every --flag the README and docs/ mention in their prose is a flag of
// some routerd command (or of the other tools they quote): a flag renamed
// in the code and not in a page sends its reader to an error.
func TestDocsNameRealFlags(t *testing.T) {
	known := map[string]bool{
		"version":  true, // routerd --version
		"build":    true, // docker compose up --build
		"pipe":     true, // redis-cli --pipe
		"sort":     true, // ps --sort in BENCHMARKS.md
		"sentinel": true, // redis-server --sentinel in sentinel.md
	}
	for _, c := range commands {
		for name := range helpFlags(t, c.name) {
			known[name] = true
		}
	}
	for name := range helpFlags(t, "deadletter", "replay") {
		known[name] = true
	}
	// The demo's, which `make run DEMO_ARGS=…` passes on.
	demo, err := os.ReadFile("../../examples/demo/main.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range regexp.MustCompile(`flag\.[A-Za-z]+\("([a-z0-9-]+)"`).FindAllStringSubmatch(string(demo), -1) {
		known[m[1]] = true
	}
	docs, err := filepath.Glob("../../docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, path := range append(docs, "../../README.md") {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		text := string(data)
		for _, m := range proseFlagRE.FindAllStringSubmatchIndex(text, -1) {
			name := text[m[2]:m[3]]
			if m[0] > 0 && strings.ContainsAny(text[m[0]-1:m[0]], "-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") || strings.HasSuffix(name, "-") {
				continue // not a flag (a---b), or a family (--tls-*)
			}
			seen++
			if !known[name] {
				t.Errorf("%s names --%s, which no routerd command has", path, name)
			}
		}
	}
	if seen < 100 {
		t.Errorf("only %d flags found in the docs", seen)
	}
}
