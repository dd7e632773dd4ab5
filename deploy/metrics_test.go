package deploy

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/routerd/routerd/internal/cli"
	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/internal/testbin"
)

// pending are metrics the dashboard and the alerts use that other work adds
// (docs/operations.md, "Metrics added by the readiness work"). Empty this
// list as they land: the test fails on a name listed here that the
// processes export.
var pending = []string{}

// prometheusOwn are series Prometheus makes itself rather than scrapes.
var prometheusOwn = []string{"up"}

// Every query of the dashboard and of the alert rules names a metric the
// running router and agent export from their first scrape (or a recording
// rule, or one of the lists above): a panel or alert on a misspelt or
// never-initialised metric shows nothing, which looks like all is well.
func TestQueriesNameExportedMetrics(t *testing.T) {
	exported := scrapeDaemons(t)
	rules := readRules(t)
	known := map[string]bool{}
	for _, n := range slices.Concat(exported, rules.recorded, prometheusOwn, pending) {
		known[n] = true
	}
	for _, n := range pending {
		if slices.Contains(exported, n) {
			t.Errorf("%s is exported now: remove it from the pending list", n)
		}
	}
	queries := map[string]string{} // query -> where
	for _, p := range dashboardPanels(t) {
		for _, q := range p.exprs {
			queries[q] = "dashboard panel " + p.title
		}
	}
	for _, r := range rules.exprs {
		queries[r.expr] = "rule " + r.name
	}
	used := 0
	for q, where := range queries {
		for _, name := range metricNames(q) {
			used++
			if !known[name] {
				t.Errorf("%s: %s is not exported by routerd serve or agent (query %q)", where, name, q)
			}
		}
	}
	if used < 40 {
		t.Errorf("only %d metric names found in %d queries: is the extraction broken?", used, len(queries))
	}
}

// docs/operations.md's metric tables name every routerd_, subscriber_ and
// cache_ metric the router and the agent export, and only those, each with
// the labels its series carry ({tag,reason}), and the line that sums the
// labels up names them all: an operator looks a metric up there, and
// builds alerts and dashboards from there. Every other page names only
// exported metrics too.
func TestDocsDocumentExportedMetrics(t *testing.T) {
	data, err := os.ReadFile("../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	section := string(data)
	start := strings.Index(section, "\n## Metrics\n")
	if start < 0 {
		t.Fatal("docs/operations.md has no Metrics section")
	}
	section = section[start+1:]
	if end := strings.Index(section, "\n## "); end > 0 {
		section = section[:end]
	}
	documented := map[string]bool{}
	docLabels := map[string][]string{} // metric -> the labels its row gives it
	for _, line := range strings.Split(section, "\n") {
		if !strings.HasPrefix(line, "| `") {
			continue
		}
		cell, _, _ := strings.Cut(strings.TrimPrefix(line, "| "), " |")
		for _, m := range regexp.MustCompile("`((?:routerd|subscriber|cache)_[a-z_]+)(?:\\{([a-z0-9_,]+)\\})?`").FindAllStringSubmatch(cell, -1) {
			documented[m[1]] = true
			if m[2] != "" {
				docLabels[m[1]] = strings.Split(m[2], ",")
			}
		}
	}
	series := scrapeLabels(t)
	exportedLabels := map[string][]string{} // metric -> its series' labels, but le
	exported := map[string]bool{}
	for _, n := range slices.Sorted(maps.Keys(series)) {
		labels := series[n]
		if !regexp.MustCompile(`^(?:routerd|subscriber|cache)_`).MatchString(n) {
			continue // Go's and the process's own
		}
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if base, ok := strings.CutSuffix(n, suffix); ok && documented[base] {
				n = base
			}
		}
		exported[n] = true
		for l := range labels {
			if l != "le" && !slices.Contains(exportedLabels[n], l) {
				exportedLabels[n] = append(exportedLabels[n], l)
			}
		}
	}
	summary := regexp.MustCompile(`(?m)^Labels are (.+) — never a tenant or a key\.`).FindStringSubmatch(section)
	if summary == nil {
		t.Error(`docs/operations.md's Metrics section has no line "Labels are … — never a tenant or a key."`)
		summary = []string{"", ""}
	}
	summed := regexp.MustCompile(`[a-z0-9_]+`).FindAllString(summary[1], -1)
	for n, labels := range exportedLabels {
		doc := docLabels[n]
		slices.Sort(labels)
		slices.Sort(doc)
		if documented[n] && !slices.Equal(labels, doc) {
			t.Errorf("%s carries the labels {%s}; docs/operations.md's table gives it {%s}", n, strings.Join(labels, ","), strings.Join(doc, ","))
		}
		for _, l := range labels {
			if l == "tenant" || l == "key" {
				t.Errorf("%s has a %s label: a series per %s", n, l, l)
			}
			if !slices.Contains(summed, l) {
				t.Errorf("%s carries the label %s, which docs/operations.md's line %q does not name", n, l, strings.TrimSpace(summary[0]))
			}
		}
	}
	for n, doc := range docLabels {
		if exported[n] && len(exportedLabels[n]) == 0 {
			t.Errorf("docs/operations.md's table gives %s the labels {%s}; its series carry none", n, strings.Join(doc, ","))
		}
	}
	for n := range exported {
		if !documented[n] {
			t.Errorf("routerd serve or agent exports %s, which docs/operations.md's metric tables do not document", n)
		}
	}
	for n := range documented {
		if !exported[n] {
			t.Errorf("docs/operations.md's metric tables document %s, which neither routerd serve nor agent exports", n)
		}
	}
	if len(documented) < 40 {
		t.Errorf("only %d metrics read from docs/operations.md: is the table read?", len(documented))
	}

	// Elsewhere too (limits.md, runbooks, the README): a metric named is
	// one exported, or one of gqlcache's (a module of its own); readiness
	// reasons such as cache_failing look like names but are not.
	reasons := map[string]bool{}
	for _, m := range regexp.MustCompile("(?m)^\\| `([a-z_]+)` \\| (?:serve|agent|both)").FindAllStringSubmatch(string(data), -1) {
		reasons[m[1]] = true
	}
	if len(reasons) < 8 {
		t.Errorf("only %d readiness reasons read from docs/operations.md", len(reasons))
	}
	gqlcache, err := os.ReadFile("../graphql/gqlcache/gqlcache.go")
	if err != nil {
		t.Fatal(err)
	}
	docs, err := filepath.Glob("../docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range append(docs, "../README.md") {
		text, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range regexp.MustCompile(`\b(?:routerd|subscriber|cache)_[a-z_]*[a-z]\b`).FindAllString(string(text), -1) {
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				if base, ok := strings.CutSuffix(n, suffix); ok && exported[base] {
					n = base
				}
			}
			if !exported[n] && !reasons[n] && !strings.Contains(string(gqlcache), `"`+n+`"`) {
				t.Errorf("%s names %s, which neither routerd serve nor agent (nor gqlcache) exports", path, n)
			}
		}
	}
}

// metricNames returns the metric names a PromQL expression selects: what
// is left once string literals, label matchers, ranges, grouping clauses,
// function calls, keywords and numbers are taken out.
func metricNames(expr string) []string {
	for _, re := range []*regexp.Regexp{
		regexp.MustCompile(`"(?:[^"\\]|\\.)*"`), // strings
		regexp.MustCompile(`\{[^}]*\}`),         // label matchers
		regexp.MustCompile(`\[[^\]]*\]`),        // ranges, subqueries
		regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`),
		regexp.MustCompile(`\boffset\s+\S+`),
	} {
		expr = re.ReplaceAllString(expr, " ")
	}
	var out []string
	for _, m := range identRE.FindAllStringSubmatchIndex(expr, -1) {
		name := expr[m[2]:m[3]]
		rest := strings.TrimLeft(expr[m[3]:], " \t\n")
		if strings.HasPrefix(rest, "(") || keywords[strings.ToLower(name)] {
			continue // a function or aggregation, or an operator
		}
		out = append(out, name)
	}
	return out
}

// identRE is an identifier not preceded by a name character or a digit
// (the e of 1e3, the m of a duration).
var identRE = regexp.MustCompile(`(?:^|[^A-Za-z0-9_:.$])([A-Za-z_:][A-Za-z0-9_:]*)`)

var keywords = map[string]bool{"and": true, "or": true, "unless": true, "bool": true, "inf": true, "nan": true}

func TestMetricNames(t *testing.T) {
	for expr, want := range map[string]string{
		`sum by (le, tag) (rate(cache_invalidation_duration_seconds_bucket{tag=~"a|b"}[5m]))`:                       "cache_invalidation_duration_seconds_bucket",
		`1 - routerd:delivery_slow:ratio_rate1h > (14.4 * 0.01) and on() x_total offset 5m`:                         "routerd:delivery_slow:ratio_rate1h x_total",
		`max by (instance) (a_members + 24 * clamp_min(b_growth, 0)) >= max by (instance) (c_guard) unless d > 1e3`: "a_members b_growth c_guard d",
		`count(count by (sha256) (routerd_matrix_info)) > 1`:                                                        "routerd_matrix_info",
		`histogram_quantile(0.99, sum(rate(x_bucket[$__rate_interval])) by (le))`:                                   "x_bucket",
	} {
		if got := strings.Join(metricNames(expr), " "); got != want {
			t.Errorf("metricNames(%q) = %q, want %q", expr, got, want)
		}
	}
}

// scrapeDaemons runs routerd serve and agent (with a cache Redis and
// --deliver, so that both kinds of the agent's series are there) on
// matrix.yaml against fresh Redis servers and returns the names of the
// series on their first /metrics once they are ready.
func scrapeDaemons(t *testing.T) []string {
	return slices.Sorted(maps.Keys(scrapeLabels(t)))
}

// labelRE is one label of a series.
var labelRE = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="`)

// scrapeLabels is scrapeDaemons with, for each series name, the names of
// the labels its series carry.
func scrapeLabels(t *testing.T) map[string]map[string]bool {
	bus, cache := redistest.Start(t), redistest.Start(t)
	names := map[string]map[string]bool{}
	for _, args := range [][]string{
		{"serve", "--matrix", "../matrix.yaml", "--redis", bus.URL, "--listen", testbin.AnyPort},
		{"agent", "--matrix", "../matrix.yaml", "--redis", bus.URL, "--cache-redis", cache.URL, "--deliver", "-", "--service", "search-svc", "--listen", testbin.AnyPort},
	} {
		log := run(t, args...)
		addr := testbin.ListenAddr(t, log.String)
		redistest.Eventually(t, 20*time.Second, args[0]+" ready", func() bool {
			code, _ := get(t, "http://"+addr+"/readyz")
			return code == http.StatusOK
		})
		_, body := get(t, "http://"+addr+"/metrics")
		sc := bufio.NewScanner(strings.NewReader(body))
		for sc.Scan() {
			line := sc.Text()
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			series, _, _ := strings.Cut(line, " ")
			name, labels, _ := strings.Cut(series, "{")
			if names[name] == nil {
				names[name] = map[string]bool{}
			}
			for _, m := range labelRE.FindAllStringSubmatch(labels, -1) {
				names[name][m[1]] = true
			}
		}
	}
	return names
}

// run runs a routerd command in-process until the test ends and returns
// its stderr.
func run(t *testing.T, args ...string) *lockedBuffer {
	var out, errb lockedBuffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() {
		done <- cli.Main(ctx, args, cli.Env{Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" }})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			t.Errorf("routerd %s did not stop", args[0])
		}
	})
	return &errb
}

func get(t *testing.T, url string) (int, string) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// lockedBuffer is testbin.Buffer: written by a process or a logger while the test reads.
type lockedBuffer = testbin.Buffer

type panel struct {
	title string
	exprs []string
}

func dashboardPanels(t *testing.T) []panel {
	data, err := os.ReadFile("grafana/dashboards/routerd.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatal(err)
	}
	var out []panel
	for _, p := range dash.Panels {
		q := panel{title: p.Title}
		for _, tg := range p.Targets {
			q.exprs = append(q.exprs, tg.Expr)
		}
		out = append(out, q)
	}
	return out
}

type rule struct {
	Record      string            `yaml:"record"`
	Alert       string            `yaml:"alert"`
	Expr        string            `yaml:"expr"`
	Annotations map[string]string `yaml:"annotations"`
}

type rulesFile struct {
	all      []rule
	recorded []string
	exprs    []struct{ name, expr string }
}

func readRules(t *testing.T) rulesFile {
	data, err := os.ReadFile("prometheus/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Groups []struct {
			Rules []rule `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(data, &f); err != nil {
		t.Fatal(err)
	}
	var out rulesFile
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			out.all = append(out.all, r)
			if r.Record != "" {
				out.recorded = append(out.recorded, r.Record)
			}
			out.exprs = append(out.exprs, struct{ name, expr string }{r.Record + r.Alert, r.Expr})
		}
	}
	return out
}

// Every alert says what happened, why it matters, and where its runbook is:
// a section of docs/operations.md that exists.
func TestAlertsHaveRunbooks(t *testing.T) {
	docs, err := os.ReadFile("../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	anchors := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^#+ (.+)$`).FindAllStringSubmatch(string(docs), -1) {
		anchors[githubAnchor(m[1])] = true
	}
	const base = "https://github.com/routerd/routerd/blob/main/docs/operations.md#"
	alerts := 0
	for _, r := range readRules(t).all {
		if r.Alert == "" {
			continue
		}
		alerts++
		if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
			t.Errorf("alert %s lacks a summary or a description", r.Alert)
		}
		url := r.Annotations["runbook_url"]
		if !strings.HasPrefix(url, base) || !anchors[strings.TrimPrefix(url, base)] {
			t.Errorf("alert %s: runbook_url %q is not a section of docs/operations.md", r.Alert, url)
		}
	}
	if alerts < 15 {
		t.Errorf("%d alerts", alerts)
	}
}

// githubAnchor is the fragment GitHub gives a heading.
func githubAnchor(heading string) string {
	h := strings.ToLower(strings.TrimSpace(heading))
	h = regexp.MustCompile(`[^a-z0-9 _-]`).ReplaceAllString(h, "")
	return strings.ReplaceAll(h, " ", "-")
}

// docker-compose.yml starts each service once what it depends on is healthy
// (as `make run` waits for /readyz), and loads the alert rules.
func TestComposeWaitsForHealthAndLoadsRules(t *testing.T) {
	data, err := os.ReadFile("../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	var compose struct {
		Services map[string]struct {
			Healthcheck *struct {
				Test []string `yaml:"test"`
			} `yaml:"healthcheck"`
			DependsOn map[string]struct {
				Condition string `yaml:"condition"`
			} `yaml:"depends_on"`
			Volumes []string `yaml:"volumes"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(data, &compose); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	for name, svc := range compose.Services {
		for dep, d := range svc.DependsOn {
			target, ok := compose.Services[dep]
			switch {
			case !ok:
				t.Errorf("%s depends on %s, which is not a service", name, dep)
			case target.Healthcheck != nil && d.Condition != "service_healthy":
				t.Errorf("%s starts with %s started, not healthy (condition %q)", name, dep, d.Condition)
			}
		}
	}
	for _, name := range []string{"redis", "routerd", "profile-agent", "prometheus"} {
		if compose.Services[name].Healthcheck == nil {
			t.Errorf("%s has no health check", name)
		}
	}
	if !slices.ContainsFunc(compose.Services["prometheus"].Volumes, func(v string) bool {
		return strings.HasPrefix(v, "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml")
	}) {
		t.Errorf("prometheus does not mount the alert rules: %v", compose.Services["prometheus"].Volumes)
	}
	var prom struct {
		RuleFiles []string `yaml:"rule_files"`
	}
	data, err = os.ReadFile("prometheus/prometheus.yml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, &prom); err != nil || !slices.Contains(prom.RuleFiles, "alerts.yml") {
		t.Errorf("prometheus.yml does not load alerts.yml: %v %v", prom.RuleFiles, err)
	}
}
