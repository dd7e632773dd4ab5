package cli

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
)

// version describes the binary from its build information: the module
// version, the commit it was built from (and whether the tree had changes),
// and the Go toolchain.
func version(bi *debug.BuildInfo, ok bool) string {
	if !ok || bi == nil {
		return "routerd (no build information) " + runtime.Version()
	}
	v := bi.Main.Version
	if v == "" {
		v = "(devel)"
	}
	var commit, when string
	modified := false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			commit = s.Value
		case "vcs.time":
			when = s.Value
		case "vcs.modified":
			modified = s.Value == "true"
		}
	}
	var parts []string
	if commit != "" {
		c := "commit " + commit[:min(12, len(commit))]
		if modified {
			c += " (modified)"
		}
		parts = append(parts, c)
	} else {
		parts = append(parts, "commit unknown (built outside a git checkout, or with -buildvcs=false)")
	}
	if when != "" {
		parts = append(parts, when)
	}
	parts = append(parts, bi.GoVersion+" "+runtime.GOOS+"/"+runtime.GOARCH)
	return fmt.Sprintf("routerd %s, %s", v, strings.Join(parts, ", "))
}

// plural is "1 key", "2 keys", "0 keys".
func plural(n int64, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprint(n) + " " + many
}
